"""Re-encrypt every sensitive value under the newest key in ``FIELD_ENCRYPTION_KEYS``.

Procedure (docs/security.md): put the new key first in ``FIELD_ENCRYPTION_KEYS``,
keep the old ones after it, deploy, run this command, run it again with
``--check`` (exit 0), and only then remove the old keys.

* Every model with a ``SensitiveTextField`` / ``SensitiveJSONField`` is found
  through the app registry, so new sensitive fields are covered without change here.
* It walks each table by primary key in batches. Reading a batch takes no locks;
  only rows with a value not yet under the newest key (a retired key, or legacy
  plaintext) are then locked (``FOR UPDATE SKIP LOCKED``: a row a worker holds is
  skipped, never waited for), re-read, re-encrypted with ``MultiFernet.rotate``
  and written back with an ``UPDATE`` of just those columns (no ``save()``, no
  signals, ``updated_at`` untouched), one transaction per batch.
* It is resumable and idempotent: stopping it loses nothing, and a second run
  only rewrites what the first did not reach (rows skipped as busy included).
* ``--check`` writes nothing and exits 1 while any row is not under the newest key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models, transaction
from django.db.models.functions import Cast

from common import crypto
from payments.fields import SensitiveJSONField, SensitiveTextField

_SENSITIVE_FIELD_TYPES = (SensitiveTextField, SensitiveJSONField)


def sensitive_models() -> Iterator[tuple[type[models.Model], list[models.Field[Any, Any]]]]:
    """Each concrete model with sensitive fields, and those fields."""
    for model in apps.get_models():
        if model._meta.proxy or not model._meta.managed:
            continue
        fields: list[models.Field[Any, Any]] = [
            f for f in model._meta.concrete_fields if isinstance(f, _SENSITIVE_FIELD_TYPES)
        ]
        if fields:
            yield model, fields


def _raw_alias(field: models.Field[Any, Any]) -> str:
    return f"_raw_{field.attname}"


def _raw_token(field: models.Field[Any, Any], raw: str | None) -> str | None:
    """The stored string of one value as read by ``Cast(..., TextField())``; None for NULL / JSON null."""
    if raw is None:
        return None
    if isinstance(field, SensitiveJSONField):
        document = json.loads(raw)
        if document is None:
            return None
        if isinstance(document, str) and crypto.is_encrypted(document):
            return document
        return raw  # legacy plaintext JSON: the document's text is what gets encrypted
    return raw


def _needs_rotation(token: str | None) -> bool:
    return token is not None and not crypto.is_under_newest_key(token)


def _key_id_or_marker(token: str) -> str | None:
    """The token's key id (None for plaintext); a malformed token reports as key "malformed"."""
    try:
        return crypto.key_id_of(token)
    except crypto.FieldDecryptionError:
        return "malformed"


def _can_rotate(token: str) -> bool:
    kid = _key_id_or_marker(token)
    return kid is None or kid in crypto.configured_key_ids()


def _stored_value(field: models.Field[Any, Any], token: str) -> models.Value:
    """An expression writing ``token`` as is: the field's own encryption must not run again."""
    output: models.Field[Any, Any] = models.JSONField() if isinstance(field, SensitiveJSONField) else models.TextField()
    return models.Value(token, output_field=output)


@dataclass
class ModelReport:
    label: str
    rows: int = 0
    stale_rows: int = 0
    plaintext_values: int = 0
    retired_key_values: int = 0
    rotated_rows: int = 0
    busy_rows: int = 0
    retired_key_ids: set[str] = field(default_factory=set)
    # Values under a key no longer configured: unreadable until that key is put back.
    unknown_key_values: int = 0
    unknown_key_ids: set[str] = field(default_factory=set)


class Command(BaseCommand):
    help = "Re-encrypt every sensitive value under the newest FIELD_ENCRYPTION_KEYS key (--check: report only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help="write nothing; exit 1 if any row is still under a retired key or in plaintext",
        )
        parser.add_argument("--batch-size", type=int, default=500, help="rows per batch and transaction (500)")

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size: int = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        check_only: bool = options["check"]
        self.stdout.write(
            f"Newest key: {crypto.newest_key_id()}; configured: {', '.join(sorted(crypto.configured_key_ids()))}."
        )
        reports = [
            self._process(model, fields, batch_size=batch_size, check_only=check_only)
            for model, fields in sensitive_models()
        ]
        for report in reports:
            self.stdout.write(self._describe(report, check_only=check_only))
        unknown = sorted(set().union(*(r.unknown_key_ids for r in reports)))
        if unknown:
            raise CommandError(
                f"{sum(r.unknown_key_values for r in reports)} value(s) are under key(s) {', '.join(unknown)}, "
                "which FIELD_ENCRYPTION_KEYS no longer lists: put those keys back (after the newest) and run again.",
                returncode=2,
            )
        if check_only:
            stale = sum(r.stale_rows for r in reports)
            if stale:
                raise CommandError(f"{stale} row(s) still under a retired key or in plaintext.", returncode=1)
        else:
            busy = sum(r.busy_rows for r in reports)
            if busy:
                raise CommandError(f"{busy} row(s) were locked by other work and skipped: run the command again.")
        self.stdout.write(self.style.SUCCESS("Every sensitive value is under the newest key."))

    def _describe(self, report: ModelReport, *, check_only: bool) -> str:
        retired = f" {', '.join(sorted(report.retired_key_ids))}" if report.retired_key_ids else ""
        text = (
            f"{report.label}: {report.rows} row(s), {report.stale_rows} not under the newest key "
            f"({report.plaintext_values} plaintext value(s), {report.retired_key_values} under retired key(s){retired}"
        )
        if report.unknown_key_values:
            text += f", {report.unknown_key_values} under missing key(s) {', '.join(sorted(report.unknown_key_ids))}"
        text += ")"
        if not check_only:
            text += f"; rotated {report.rotated_rows}, skipped {report.busy_rows} busy"
        return text

    def _read_batch(
        self, model: type[models.Model], fields: list[models.Field[Any, Any]], *, after: Any, limit: int
    ) -> list[tuple[Any, ...]]:
        queryset = model._base_manager.order_by("pk")
        if after is not None:
            queryset = queryset.filter(pk__gt=after)
        # Cast to text: the raw stored strings, without the fields' decryption.
        raw = {_raw_alias(f): Cast(f.attname, output_field=models.TextField()) for f in fields}
        return list(queryset.annotate(**raw).values_list("pk", *raw)[:limit])

    def _process(
        self, model: type[models.Model], fields: list[models.Field[Any, Any]], *, batch_size: int, check_only: bool
    ) -> ModelReport:
        report = ModelReport(label=model._meta.label)
        known = crypto.configured_key_ids()
        after: Any = None
        while True:
            batch = self._read_batch(model, fields, after=after, limit=batch_size)
            if not batch:
                return report
            after = batch[-1][0]
            stale_pks = []
            for pk, *raws in batch:
                report.rows += 1
                stale = False
                for f, raw in zip(fields, raws, strict=True):
                    token = _raw_token(f, raw)
                    if not _needs_rotation(token):
                        continue
                    assert token is not None
                    stale = True
                    kid = _key_id_or_marker(token)
                    if kid is None:
                        report.plaintext_values += 1
                    elif kid not in known:
                        report.unknown_key_values += 1
                        report.unknown_key_ids.add(kid)
                    else:
                        report.retired_key_values += 1
                        report.retired_key_ids.add(kid)
                if stale:
                    report.stale_rows += 1
                    stale_pks.append(pk)
            if stale_pks and not check_only:
                rotated, busy = self._rotate_rows(model, fields, stale_pks)
                report.rotated_rows += rotated
                report.busy_rows += busy

    def _rotate_rows(
        self, model: type[models.Model], fields: list[models.Field[Any, Any]], pks: list[Any]
    ) -> tuple[int, int]:
        """Lock, re-read and rewrite the given rows in one transaction; returns (rotated, busy)."""
        raw = {_raw_alias(f): Cast(f.attname, output_field=models.TextField()) for f in fields}
        rotated = 0
        with transaction.atomic():
            locked = list(
                model._base_manager.filter(pk__in=pks)
                .order_by("pk")
                .select_for_update(skip_locked=True)
                .annotate(**raw)
                .values_list("pk", *raw)
            )
            for pk, *raws in locked:
                changes: dict[str, models.Value] = {}
                for f, raw_value in zip(fields, raws, strict=True):
                    token = _raw_token(f, raw_value)
                    if _needs_rotation(token):
                        assert token is not None
                        if _can_rotate(token):  # values under a missing key are reported, not touched
                            changes[f.attname] = _stored_value(f, crypto.rotate_token(token))
                if changes:
                    model._base_manager.filter(pk=pk).update(**changes)
                    rotated += 1
        # Rows not locked were either deleted meanwhile (nothing to do) or held by other work.
        unlocked = set(pks) - {row[0] for row in locked}
        busy = model._base_manager.filter(pk__in=unlocked).count() if unlocked else 0
        return rotated, busy
