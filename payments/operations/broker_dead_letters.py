"""Recording what RabbitMQ dead-lettered: the consumer of the ``dead_letter`` queue.

The work queues dead-letter (exchange ``payments.dlx`` → queue ``dead_letter``, see
``config/celery.py``) messages a worker rejected (a task that failed, an unknown task,
a message that is not a task) and, on quorum queues, messages delivered more than
``BROKER_DELIVERY_LIMIT`` times. Nothing consumes that queue but this: each message
becomes a ``DeadLetter`` row (task name and id, the payment ids it named, RabbitMQ's
``x-death`` reason, queue and count; never the rest of the body), committed before the
message is acknowledged. Recording twice (a crash between commit and ack) is harmless:
the row's fingerprint is unique.

The payments a dead message named are not lost with it: each is still ``dispatched``,
``retry_scheduled`` or ``reconciling`` with a lease in PostgreSQL, and the sweep hands it
out again when the lease runs out. A dead letter says something *rejected* work (a bug,
a poison message, a crash loop): read the worker log around ``received_at``.

Celery acknowledges (drops) a message whose body it cannot decode at all; only its log
line remains (``Can't decode message body``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction

from payments.models import DeadLetter

logger = logging.getLogger(__name__)

DRAIN_LIMIT = 1000  # messages per run: a flood is drained over several runs


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _payment_ids(args: Any) -> list[str]:
    """UUIDs among the task's positional arguments (our tasks take a list of payment ids), nothing else."""
    found: list[str] = []

    def visit(value: Any, depth: int) -> None:
        if depth > 2 or len(found) >= 500:
            return
        if isinstance(value, str):
            try:
                found.append(str(uuid.UUID(value)))
            except ValueError:
                return
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item, depth + 1)

    visit(args, 0)
    return found


def _decode_args(body: bytes, content_type: str) -> Any:
    if "json" not in content_type:
        return None
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    # Celery message protocol 2: [args, kwargs, embed].
    if isinstance(decoded, list) and decoded and isinstance(decoded[0], list):
        return decoded[0]
    return None


def _deaths(headers: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    deaths = headers.get("x-death")
    return [d for d in deaths if isinstance(d, Mapping)] if isinstance(deaths, list) else []


def describe(
    body: bytes, headers: Mapping[str, Any], properties: Mapping[str, Any], delivery: Mapping[str, Any]
) -> dict[str, Any]:
    """The fields of a ``DeadLetter`` for one message: ids, names and RabbitMQ's reasons, no payload."""
    deaths = _deaths(headers)
    first = deaths[0] if deaths else {}
    content_type = _text(properties.get("content_type") or properties.get("content-type"))
    reason = _text(first.get("reason") or headers.get("x-first-death-reason"))
    queue = _text(first.get("queue") or headers.get("x-first-death-queue"))
    count = first.get("count", 0)
    death_time = first.get("time")
    task_id = _text(headers.get("id") or properties.get("correlation_id"))[:100]
    fingerprint = hashlib.sha256(
        body
        + json.dumps(
            [task_id, reason, queue, str(count), str(death_time), _text(properties.get("message_id"))],
            default=str,
        ).encode()
    ).hexdigest()
    return {
        "fingerprint": fingerprint,
        "task_name": _text(headers.get("task"))[:200],
        "task_id": task_id,
        "queue": queue[:100],
        "reason": reason[:50],
        "death_count": int(count) if isinstance(count, int) else 0,
        "payment_ids": _payment_ids(_decode_args(body, content_type)),
        "body_bytes": len(body),
        "detail": {
            "content_type": content_type[:100],
            "exchange": _text(first.get("exchange"))[:100],
            "routing_keys": [_text(k)[:100] for k in first.get("routing-keys", []) if k is not None][:5],
            "dead_lettered_at": death_time.isoformat() if isinstance(death_time, datetime) else _text(death_time),
            "redelivered": bool(delivery.get("redelivered")),
        },
    }


def dead_letter_record(fields: Mapping[str, Any]) -> tuple[DeadLetter, bool]:
    """One row per dead message (idempotent by fingerprint)."""
    values = dict(fields)
    fingerprint = values.pop("fingerprint")
    with transaction.atomic():
        return DeadLetter.objects.get_or_create(fingerprint=fingerprint, defaults=values)


def dead_letters_drain(*, limit: int = DRAIN_LIMIT) -> int:
    """Record (then acknowledge) up to ``limit`` messages of the ``dead_letter`` queue; returns how many."""
    if not settings.BROKER_IS_AMQP:
        return 0  # the embedded filesystem transport has no dead-letter exchange
    from config.celery import app, dead_letter_queue

    recorded = 0
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=3)
        channel = connection.channel()
        try:
            queue = dead_letter_queue(settings.BROKER_QUEUE_TYPE)(channel)
            queue.declare()
            for _ in range(limit):
                message = queue.get(no_ack=False, accept=None)
                if message is None:
                    break
                raw: Any = message.body
                body = raw if isinstance(raw, bytes) else _text(raw).encode()
                properties = {**(message.properties or {}), "content_type": message.content_type or ""}
                fields = describe(body, message.headers or {}, properties, message.delivery_info or {})
                row, created = dead_letter_record(fields)
                message.ack()  # after the commit: a crash in between records it again, as the same row
                recorded += 1
                if created:
                    logger.warning(
                        "dead letter recorded: task=%s reason=%s queue=%s payments=%s",
                        row.task_name or "-",
                        row.reason or "-",
                        row.queue or "-",
                        len(row.payment_ids),
                    )
        finally:
            channel.close()  # type: ignore[attr-defined]
    return recorded


def payments_named(dead_letters: Iterable[DeadLetter]) -> list[str]:
    return sorted({pid for dl in dead_letters for pid in dl.payment_ids})
