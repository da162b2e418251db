"""Celery tasks: thin wrappers that take ids and call one service each.

Queues and routes are in ``config/celery.py``; the execution path and its
guarantees in ``payments/engine/execution.py`` and docs/execution.md.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError

from . import execution

# A database that is briefly unreachable is worth a few quick retries; anything else is a bug
# and fails loudly (the claim's lease brings the payment back either way).
_DB_ERRORS = (OperationalError, InterfaceError)
# A task that fails (a bug, a poison message) is rejected rather than acknowledged
# (acks_on_failure_or_timeout=False): RabbitMQ moves it to the dead-letter queue, where
# ``drain_dead_letters`` records it for operators. Celery's default (acknowledge on failure)
# would drop it without a trace.
_REJECT_ON_FAILURE = False


@shared_task(name=execution.SWEEP_TASK, ignore_result=True, acks_late=False)
def sweep_due_payments_task() -> dict[str, Any]:
    # acks_late off: a tick lost with its worker is replaced by the next one a second later.
    return execution.payments_sweep().as_dict()


# One policy for the tasks that move payments: acknowledged after the work, given back if the
# worker dies, retried on database hiccups, dead-lettered (rejected) when they fail for good.
_PAYMENT_TASK_OPTIONS: dict[str, Any] = {
    "ignore_result": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": _DB_ERRORS,
    "max_retries": 3,
    "default_retry_delay": 1,
    "acks_on_failure_or_timeout": _REJECT_ON_FAILURE,
}


@shared_task(name=execution.EXECUTE_TASK, **_PAYMENT_TASK_OPTIONS)
def execute_payments_task(payment_ids: list[str]) -> dict[str, Any]:
    return execution.payments_execute(payment_ids).as_dict()


@shared_task(name=execution.RECONCILE_TASK, **_PAYMENT_TASK_OPTIONS)
def reconcile_payments_task(payment_ids: list[str]) -> dict[str, Any]:
    try:
        return execution.payments_reconcile(payment_ids).as_dict()
    except _DB_ERRORS:
        raise  # retried above; the claim's lease brings the payments back either way
    except Exception:
        # A crash counts as a try on the ladder (and dead-letters past the deadline), then fails loudly.
        execution.payments_reconcile_crashed(payment_ids)
        raise


@shared_task(name=execution.IDEMPOTENCY_PURGE_TASK, ignore_result=True, acks_late=True)
def idempotency_purge_task() -> int:
    from payments.services import idempotency_purge_expired  # the API's service; imported when run

    return idempotency_purge_expired()


@shared_task(name=execution.DEAD_LETTER_DRAIN_TASK, ignore_result=True, acks_late=True)
def drain_dead_letters_task() -> int:
    from payments.operations.broker_dead_letters import dead_letters_drain

    return dead_letters_drain()
