"""The payee-account search column (``Payment.payee_account_hmac``) and the per-user pending index.

Safe on a live, large table:

1. The column is added with a constant database default: a catalogue-only change on
   PostgreSQL (no table rewrite), and rows inserted meanwhile by processes still
   running the previous release get ``""`` instead of failing.
2. Existing rows are backfilled in batches of ``BATCH_SIZE``, in primary-key order,
   one short transaction each (the migration is not atomic), reading each account
   decrypted through the model. Rows already filled are skipped, so a run that was
   stopped resumes where it left off.
3. The two indexes are built afterwards with ``CREATE INDEX CONCURRENTLY`` on
   PostgreSQL: writes continue while they build (a plain index elsewhere).

Rows written with ``""`` by the previous release during a rolling deploy are filled
by ``manage.py rehash_payee_accounts --missing-only``.

Self-contained on purpose (a migration must not change when app code does): the
normalisation and HMAC below are those of ``common.crypto.payee_account_hmac``,
and a test keeps them equal.
"""

import hashlib
import hmac

from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models, transaction

BATCH_SIZE = 500


def account_hmac(account):
    normalised = "".join(account.split()).upper()
    return hmac.new(str(settings.FIELD_HMAC_KEY).encode("utf-8"), normalised.encode("utf-8"), hashlib.sha256).hexdigest()


def backfill_payee_account_hmac(apps, schema_editor, batch_size=BATCH_SIZE):
    Payment = apps.get_model("payments", "Payment")
    db = schema_editor.connection.alias
    last_pk = None
    while True:
        rows = Payment.objects.using(db).filter(payee_account_hmac="").order_by("pk")
        if last_pk is not None:
            rows = rows.filter(pk__gt=last_pk)
        batch = list(rows.only("pk", "payee_account")[:batch_size])
        if not batch:
            return
        for payment in batch:
            payment.payee_account_hmac = account_hmac(payment.payee_account)
        with transaction.atomic(using=db):
            Payment.objects.using(db).bulk_update(batch, ["payee_account_hmac"])
        last_pk = batch[-1].pk


class Migration(migrations.Migration):
    atomic = False  # batches commit one by one; CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("payments", "0002_execution_schedules"),
    ]

    operations = [
        migrations.AddField(
            model_name="payment",
            name="payee_account_hmac",
            field=models.CharField(db_default="", default="", editable=False, max_length=64),
        ),
        migrations.RunPython(backfill_payee_account_hmac, migrations.RunPython.noop, elidable=True),
        AddIndexConcurrently(
            model_name="payment",
            index=models.Index(fields=["payee_account_hmac"], name="payment_payee_account_hmac_idx"),
        ),
        AddIndexConcurrently(
            model_name="payment",
            index=models.Index(
                condition=models.Q(("status__in", ["scheduled", "dispatched"])),
                fields=["owner"],
                name="payment_owner_pending_idx",
            ),
        ),
    ]
