"""Data migration: the beat schedule of the execution engine (django-celery-beat rows).

- the sweep, every ``settings.SWEEP_INTERVAL_SECONDS`` (IntervalSchedule has an
  integer ``every``: whole seconds, or microseconds for a fractional interval),
  its ticks expiring after two intervals;
- the idempotency-key purge, hourly.

Self-contained on purpose (a migration must not change when app code does);
``payments.engine.execution.periodic_tasks_ensure`` does the same at run time
(``manage.py ensure_schedules``).
"""

from django.conf import settings
from django.db import migrations
from django.utils import timezone

SWEEP = "payments: sweep due payments"
PURGE = "payments: purge expired idempotency keys"


def _every_period(seconds):
    if float(seconds).is_integer():
        return int(seconds), "seconds"
    return round(seconds * 1_000_000), "microseconds"


def create_schedules(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    interval_seconds = settings.SWEEP_INTERVAL_SECONDS
    every, period = _every_period(interval_seconds)
    sweep_interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
    hourly, _ = IntervalSchedule.objects.get_or_create(every=1, period="hours")
    PeriodicTask.objects.update_or_create(
        name=SWEEP,
        defaults={
            "task": "payments.tasks.sweep_due_payments_task",
            "interval": sweep_interval,
            "expire_seconds": max(1, round(2 * interval_seconds)),
            "enabled": True,
            "description": "Claims due payments and publishes their execution (docs/execution.md).",
        },
    )
    PeriodicTask.objects.update_or_create(
        name=PURGE,
        defaults={
            "task": "payments.tasks.idempotency_purge_task",
            "interval": hourly,
            "expire_seconds": 1800,
            "enabled": True,
            "description": "Deletes Idempotency-Key records past their retention.",
        },
    )
    # Historical models send no signals: tell a running DatabaseScheduler the schedule changed.
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def delete_schedules(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[SWEEP, PURGE]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedules, delete_schedules)]
