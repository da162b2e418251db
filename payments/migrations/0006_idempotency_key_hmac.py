"""Idempotency keys are kept as their HMAC, never in clear (``IdempotencyRecord.key`` → ``key_hmac``).

One transaction: the column is renamed, every existing key is replaced by its HMAC (in
batches of ``BATCH_SIZE`` rows, in primary-key order), and the column shrinks to 64
characters. A record converted here replays exactly as before: the new code looks keys up
by the same HMAC. The table holds only ``IDEMPOTENCY_KEY_RETENTION_HOURS`` of keys.

During a rolling deploy, web processes of the previous release fail to create payments
once this has run (their column is gone): no payment is created, the client's retry
with the same key reaches a new process and succeeds.

Self-contained on purpose (a migration must not change when app code does): the HMAC
below is ``common.crypto.idempotency_key_hmac``, and a test keeps them equal.
"""

import hashlib
import hmac

from django.conf import settings
from django.db import migrations, models

BATCH_SIZE = 1000
PREFIX = b"scheduled-payments/idempotency-key:"


def key_hmac(key):
    secret = str(settings.FIELD_HMAC_KEY).encode("utf-8")
    return hmac.new(secret, PREFIX + key.encode("utf-8"), hashlib.sha256).hexdigest()


def hash_keys_in_clear(apps, schema_editor, batch_size=BATCH_SIZE):
    IdempotencyRecord = apps.get_model("payments", "IdempotencyRecord")
    db = schema_editor.connection.alias
    last_pk = 0
    while True:
        batch = list(
            IdempotencyRecord.objects.using(db).filter(pk__gt=last_pk).order_by("pk").only("pk", "key_hmac")[:batch_size]
        )
        if not batch:
            return
        for record in batch:
            record.key_hmac = key_hmac(record.key_hmac)
        IdempotencyRecord.objects.using(db).bulk_update(batch, ["key_hmac"])
        last_pk = batch[-1].pk


class Migration(migrations.Migration):
    dependencies = [
        ("payments", "0005_idempotency_single_transaction"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="idempotencyrecord", name="idempotency_user_key_unique"),
        migrations.RenameField(model_name="idempotencyrecord", old_name="key", new_name="key_hmac"),
        migrations.RunPython(hash_keys_in_clear, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="idempotencyrecord",
            name="key_hmac",
            field=models.CharField(max_length=64),
        ),
        migrations.AddConstraint(
            model_name="idempotencyrecord",
            constraint=models.UniqueConstraint(fields=("user", "key_hmac"), name="idempotency_user_key_unique"),
        ),
    ]
