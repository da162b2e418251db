"""Keyset (cursor) pagination of a user's payments on ``(scheduled_for, id)``.

The cursor is opaque to clients: URL-safe base64 of ``v1|<scheduled_for>|<id>``,
the sort key of the last row of the previous page. Unlike an offset, it stays
correct while rows are inserted or change status between pages, and every page
is one index range scan on ``payment_owner_listing_idx``.

The cursor is not signed: it only says where to resume, and the listing is
always scoped to the requesting user, so a forged cursor shows nothing new.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime

from common.error_codes import ErrorCode, ProblemError
from payments.selectors import Cursor

from . import contract

_CURSOR_VERSION = "v1"
_MAX_CURSOR_LENGTH = 200


def encode_cursor(cursor: Cursor) -> str:
    instant = cursor.scheduled_for.astimezone(UTC).isoformat()
    raw = f"{_CURSOR_VERSION}|{instant}|{cursor.id}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """Parse a cursor from a ``next`` link; anything else is 422 ``invalid_cursor``."""
    try:
        if not text or len(text) > _MAX_CURSOR_LENGTH:
            raise ValueError("bad length")
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
        version, instant, identifier = raw.split("|")
        if version != _CURSOR_VERSION:
            raise ValueError("unknown version")
        scheduled_for = datetime.fromisoformat(instant)
        if scheduled_for.tzinfo is None:
            raise ValueError("naive instant")
        return Cursor(scheduled_for=scheduled_for.astimezone(UTC), id=uuid.UUID(identifier))
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):  # Overflow: no such instant in UTC
        raise ProblemError.invalid(
            "cursor", ErrorCode.INVALID_CURSOR, "The cursor is not valid; use the `next` link of a previous page."
        ) from None


def parse_limit(raw: str | None) -> int:
    """``limit``: default 50; values above 200 are clamped to 200; not a positive integer → 422."""
    if raw is None or raw == "":
        return contract.DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9 or int(raw) < 1:
        raise ProblemError.invalid(
            "limit", ErrorCode.INVALID_FILTER, f"limit must be a whole number from 1 to {contract.MAX_LIMIT}."
        )
    return min(int(raw), contract.MAX_LIMIT)
