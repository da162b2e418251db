"""The Celery application shared by worker, beat and the web process (which only publishes).

Queues (docs/execution.md explains the choices):

- ``sweep``: the beat tick. Ticks are disposable (they expire after two
  intervals), so this queue has no dead-letter exchange: a stale tick is dropped.
- ``execution``: the execution of due payments, published with an ETA (the ``worker`` process).
- ``recovery``: reconciliation tasks and retries (the ``recovery`` process): slow or hanging
  lookups and re-sends there can never hold up the sweep or a due payment.
- ``housekeeping``: periodic maintenance (idempotency purge) and the default.
- ``dead_letter``: fed by the ``payments.dlx`` exchange with messages RabbitMQ
  gave up on (rejected, or redelivered more than the delivery limit). The
  payments they named are never lost with them: their lease brings them back.

On RabbitMQ the queues are durable and, by default, quorum queues (replicated,
with a delivery limit); ETAs then use Celery's native delayed delivery, which
needs a topic exchange. The embedded filesystem transport gets plain queues.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import beat_init, task_postrun, task_prerun, worker_init
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

TASK_EXCHANGE = "payments"
DEAD_LETTER_EXCHANGE = "payments.dlx"
WORK_QUEUES = ("sweep", "execution", "recovery", "housekeeping")
# Retries of attempts proven uncharged: execution tasks, but on the recovery queue with reconciliations.
RECOVERY_QUEUE = "recovery"
DEAD_LETTER_QUEUE = "dead_letter"


def build_task_queues(*, amqp: bool, queue_type: str = "quorum", delivery_limit: int = 10) -> tuple[Queue, ...]:
    """The queues to declare, for RabbitMQ (``amqp``) or kombu's virtual transports."""
    if not amqp:
        # filesystem:// (the embedded default) knows nothing of queue arguments.
        return tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in WORK_QUEUES)
    if queue_type not in ("quorum", "classic"):
        raise ValueError(f"BROKER_QUEUE_TYPE must be quorum or classic, not {queue_type!r}")
    # Topic, not direct: Celery's native delayed delivery (ETAs on quorum queues) binds
    # "#.<routing key>" from its delay exchanges to this one.
    exchange = Exchange(TASK_EXCHANGE, type="topic", durable=True)
    queues = []
    for name in WORK_QUEUES:
        arguments: dict[str, Any] = {"x-queue-type": queue_type}
        if name != "sweep":
            arguments["x-dead-letter-exchange"] = DEAD_LETTER_EXCHANGE
        if queue_type == "quorum":
            # Without a limit RabbitMQ 4 drops a message after 20 redeliveries; with one, a
            # poison message goes to the dead-letter exchange instead of looping forever.
            arguments["x-delivery-limit"] = delivery_limit
            if name != "sweep":
                arguments["x-dead-letter-strategy"] = "at-least-once"
                arguments["x-overflow"] = "reject-publish"  # required by at-least-once
        queues.append(Queue(name, exchange, routing_key=name, durable=True, queue_arguments=arguments))
    return tuple(queues)


def dead_letter_queue(queue_type: str = "quorum") -> Queue:
    """Where RabbitMQ puts what it gave up on. Not a task queue: no worker consumes it, and it must
    stay out of ``task_queues`` (Celery would bind it to its delayed-delivery exchange)."""
    return Queue(
        DEAD_LETTER_QUEUE,
        Exchange(DEAD_LETTER_EXCHANGE, type="fanout", durable=True),
        routing_key="",
        durable=True,
        queue_arguments={"x-queue-type": queue_type},
    )


app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.on_after_configure.connect
def _configure_queues(sender: Celery, **kwargs: Any) -> None:
    # Runs once, when the configuration is first read (lazily, after Django's settings load).
    from django.conf import settings

    sender.conf.task_queues = build_task_queues(
        amqp=settings.BROKER_IS_AMQP,
        queue_type=settings.BROKER_QUEUE_TYPE,
        delivery_limit=settings.BROKER_DELIVERY_LIMIT,
    )


@worker_init.connect
@beat_init.connect
def _refuse_contradictory_timing(sender: Any = None, **kwargs: Any) -> None:
    """A worker or beat never starts with leases shorter than the work they cover (``payments.engine.timing``).

    Celery's Django fix-up runs the system checks at start but ignores their errors.
    """
    from django.core import checks
    from django.core.management.base import SystemCheckError

    errors = [message for message in checks.run_checks(tags=["payments"]) if message.is_serious()]
    if errors:
        raise SystemCheckError("\n".join(str(error) for error in errors))


@worker_init.connect
def _declare_dead_letter_queue(sender: Any = None, **kwargs: Any) -> None:
    # Declared by the worker before it consumes, so nothing is dead-lettered into a missing exchange.
    from django.conf import settings

    if not settings.BROKER_IS_AMQP:
        return
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=5)
        dead_letter_queue(settings.BROKER_QUEUE_TYPE)(connection.default_channel).declare()


app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def _recycle_database_connections(**_: Any) -> None:
    """Keep worker connections between tasks, as Django keeps them between requests.

    Celery's Django fix-up would close every connection around every task (a new
    connection costs ~8 ms of CPU) unless ``CELERY_DB_REUSE_MAX`` is set; with it set,
    this applies Django's own rule instead: close a connection only when it is past
    ``CONN_MAX_AGE``, broken, or left outside autocommit.
    """
    from django.db import close_old_connections

    close_old_connections()
