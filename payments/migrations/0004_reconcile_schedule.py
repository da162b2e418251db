"""Failure handling: the columns, tables and schedule of retries, reconciliation, dead letters and the circuit.

- ``Payment``: ``reconcile_attempts`` (the rung of the reconcile ladder), ``dead_letter_reason``,
  ``redrive_attempt`` / ``redriven_at`` (where an operator's re-drive started a fresh retry
  budget). Constant database defaults: a catalogue-only change on PostgreSQL (no rewrite),
  and rows inserted meanwhile by the previous release still insert.
- ``DeadLetter`` (messages RabbitMQ dead-lettered, recorded by ``drain_dead_letters``),
  ``GatewayCircuit`` (the circuit breaker per gateway), and the proxy ``DeadLetteredPayment``
  (the operations admin) with its permission ``operate_deadletteredpayment``.
- The beat row of the dead-letter drain (every ``DEAD_LETTER_DRAIN_INTERVAL_SECONDS``).
  Reconciliation itself runs in the sweep (``payments_sweep``: expired submissions, then
  reconciliations whose ``next_attempt_at`` is due), so it needs no schedule of its own.
- The ``operations`` group gets: view dead-lettered payments, dead letters and circuits, and
  operate dead letters (re-drive, resolve, close a circuit). Added, never reset: other grants stay.

Self-contained on purpose (a migration must not change when app code does).
"""

import django.utils.timezone
from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations, models
from django.utils import timezone

DRAIN = "payments: record dead-lettered messages"
OPERATIONS_GRANTS = [
    "view_deadletteredpayment",
    "operate_deadletteredpayment",
    "view_deadletter",
    "view_gatewaycircuit",
]


def _every_period(seconds):
    if float(seconds).is_integer():
        return int(seconds), "seconds"
    return round(seconds * 1_000_000), "microseconds"


def create_schedule_and_grants(apps, schema_editor):
    using = schema_editor.connection.alias
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    seconds = settings.DEAD_LETTER_DRAIN_INTERVAL_SECONDS
    every, period = _every_period(seconds)
    interval, _ = IntervalSchedule.objects.using(using).get_or_create(every=every, period=period)
    PeriodicTask.objects.using(using).update_or_create(
        name=DRAIN,
        defaults={
            "task": "payments.tasks.drain_dead_letters_task",
            "interval": interval,
            "expire_seconds": max(1, round(seconds)),
            "enabled": True,
            "description": "Records messages RabbitMQ dead-lettered, for operators (docs/operations.md).",
        },
    )
    # Historical models send no signals: tell a running DatabaseScheduler the schedule changed.
    PeriodicTasks.objects.using(using).update_or_create(ident=1, defaults={"last_update": timezone.now()})

    # Permissions are normally created after all migrations (post_migrate); create this app's now.
    app_config = apps.get_app_config("payments")
    app_config.models_module = True
    create_permissions(app_config, verbosity=0, using=using, apps=apps)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.using(using).get_or_create(name="operations")
    group.permissions.add(
        *Permission.objects.using(using).filter(content_type__app_label="payments", codename__in=OPERATIONS_GRANTS)
    )


def delete_schedule_and_grants(apps, schema_editor):
    using = schema_editor.connection.alias
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.using(using).filter(name=DRAIN).delete()
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for group in Group.objects.using(using).filter(name="operations"):
        group.permissions.remove(
            *Permission.objects.using(using).filter(content_type__app_label="payments", codename__in=OPERATIONS_GRANTS)
        )


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0003_payee_account_hmac"),
        ("accounts", "0002_staff_roles"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.AddField(
            model_name="payment",
            name="reconcile_attempts",
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name="payment",
            name="dead_letter_reason",
            field=models.CharField(blank=True, db_default="", default="", max_length=64),
        ),
        migrations.AddField(
            model_name="payment",
            name="redrive_attempt",
            field=models.PositiveIntegerField(db_default=0, default=0),
        ),
        migrations.AddField(
            model_name="payment",
            name="redriven_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name="DeadLetter",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("received_at", models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
                ("fingerprint", models.CharField(max_length=64, unique=True)),
                ("task_name", models.CharField(blank=True, default="", max_length=200)),
                ("task_id", models.CharField(blank=True, default="", max_length=100)),
                ("queue", models.CharField(blank=True, default="", max_length=100)),
                ("reason", models.CharField(blank=True, default="", max_length=50)),
                ("death_count", models.PositiveIntegerField(default=0)),
                ("payment_ids", models.JSONField(blank=True, default=list)),
                ("body_bytes", models.PositiveIntegerField(default=0)),
                ("detail", models.JSONField(blank=True, default=dict)),
            ],
            options={
                "ordering": ["-received_at", "-id"],
            },
        ),
        migrations.CreateModel(
            name="GatewayCircuit",
            fields=[
                ("name", models.CharField(max_length=50, primary_key=True, serialize=False)),
                (
                    "state",
                    models.CharField(
                        choices=[("closed", "Closed"), ("open", "Open"), ("half_open", "Half Open")],
                        default="closed",
                        max_length=10,
                    ),
                ),
                ("window_started_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("window_calls", models.PositiveIntegerField(default=0)),
                ("window_failures", models.PositiveIntegerField(default=0)),
                ("opened_until", models.DateTimeField(blank=True, null=True)),
                ("probe_started_at", models.DateTimeField(blank=True, null=True)),
                ("changed_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
        ),
        migrations.CreateModel(
            name="DeadLetteredPayment",
            fields=[],
            options={
                "verbose_name": "dead-lettered payment",
                "permissions": [("operate_deadletteredpayment", "Can re-drive and resolve dead-lettered payments")],
                "proxy": True,
                "indexes": [],
                "constraints": [],
            },
            bases=("payments.payment",),
        ),
        migrations.RunPython(create_schedule_and_grants, delete_schedule_and_grants),
    ]
