"""The no-op Celery task: the reference rate of the workers that execute payments."""

from __future__ import annotations

from celery import shared_task

NOOP_TASK = "bench.noop"


@shared_task(name=NOOP_TASK, ignore_result=True)
def noop_task(index: int = 0) -> None:
    return None
