"""Field types for personal and sensitive payment data, encrypted at rest.

Every personal value (payee name and account, description, metadata, the
payment-method token, stored idempotent responses) is declared with one of
these; this module is the one place that decides how such data is stored.

* ``SensitiveTextField`` keeps a ``text`` column holding ``enc1:<key id>:<Fernet token>``.
* ``SensitiveJSONField`` keeps a ``jsonb`` column whose JSON value is a *string*,
  ``"enc1:<key id>:<Fernet token>"``, encrypting the whole JSON document.

Column types, ``deconstruct()`` and therefore migrations are those of the plain
``TextField`` / ``JSONField``: switching encryption on needed no migration.
Values are encrypted in ``get_prep_value`` (every save, ``update()`` and
``bulk_create`` goes through it) and decrypted in ``from_db_value``; model
instances, forms, serializers and the admin only ever see plaintext. A stored
value without the ``enc1:`` prefix (written before encryption was switched on)
reads as is; ``manage.py rotate_encryption_keys`` encrypts it.

Not possible, on purpose: filtering or ordering by the *content* of these
fields. The ciphertext is randomised (equal plaintexts encrypt differently),
so ``exact``, ``icontains``, JSON key lookups and the like could only ever
match nothing; they raise ``FieldError`` instead of failing silently. Only
``isnull`` is allowed. A field that must be searched (e.g. support finding a
payment by payee account) needs a keyed hash (HMAC) column beside the
ciphertext.
"""

from __future__ import annotations

import json
from typing import Any

from django.core import checks
from django.core.exceptions import FieldError
from django.db import models

from common.crypto import decrypt_str, encrypt_str, is_encrypted

# The only lookup whose answer does not depend on the plaintext.
_ALLOWED_LOOKUPS = frozenset({"isnull"})


class _EncryptedFieldMixin:
    """Refuses lookups that cannot work on randomised ciphertext, and indexes that would be useless."""

    name: str
    unique: bool
    db_index: bool

    def _unsupported(self, kind: str, name: str) -> FieldError:
        return FieldError(
            f"{type(self).__name__} {self.name!r} is encrypted with a random IV: the {kind} {name!r} cannot "
            "match its content. Filter on another column, or add an HMAC search column beside it."
        )

    def get_lookup(self, lookup_name: str) -> Any:
        if lookup_name not in _ALLOWED_LOOKUPS:
            raise self._unsupported("lookup", lookup_name)
        return super().get_lookup(lookup_name)  # type: ignore[misc]

    def get_transform(self, name: str) -> Any:
        raise self._unsupported("transform", name)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors: list[checks.CheckMessage] = super().check(**kwargs)  # type: ignore[misc]
        if self.unique or self.db_index:
            errors.append(
                checks.Error(
                    f"{type(self).__name__} cannot be unique or indexed: its ciphertext is randomised.",
                    obj=self,
                    id="payments.E002",
                )
            )
        return errors


class SensitiveTextField(_EncryptedFieldMixin, models.TextField):  # type: ignore[type-arg]
    """Text that is personal or secret: encrypted at rest, never indexed, never logged."""

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None:
            return None
        return encrypt_str(value)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if value is None:
            return None
        return decrypt_str(value)


class SensitiveJSONField(_EncryptedFieldMixin, models.JSONField):  # type: ignore[type-arg]
    """JSON that may contain personal data: the whole document is encrypted at rest."""

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None:
            # SQL NULL for a nullable field (get_db_prep_save) or JSON null: nothing personal in either.
            return None
        return encrypt_str(json.dumps(value, cls=self.encoder))

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        value = super().from_db_value(value, expression, connection)
        if is_encrypted(value):
            return json.loads(decrypt_str(value), cls=self.decoder)
        return value
