"""Token life cycle: issue, authenticate, revoke. Every entry point calls these."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from audit.services import audit_record

from .models import ApiToken, User, hash_token

# Writing last_used_at on every request would add a write per API call.
_LAST_USED_GRANULARITY = timedelta(minutes=5)


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    raw: str


def token_issue(*, user: User, name: str = "", expires_in: timedelta | None = None, actor: str) -> IssuedToken:
    raw = ApiToken.generate_raw()
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            name=name,
            token_hash=hash_token(raw),
            display_prefix=raw[:10],
            expires_at=timezone.now() + expires_in if expires_in else None,
        )
        audit_record(actor=actor, action="api_token.issued", target=token, data={"user_id": user.pk})
    return IssuedToken(token=token, raw=raw)


def token_revoke(*, token_id: int, actor: str) -> ApiToken:
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().get(pk=token_id)
        if token.revoked_at is None:
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            audit_record(actor=actor, action="api_token.revoked", target=token, data={"user_id": token.user_id})
    return token


def token_authenticate(raw: str) -> User | None:
    """The active user a raw bearer token belongs to, or None."""
    token = ApiToken.objects.usable().select_related("user").filter(token_hash=hash_token(raw)).first()
    if token is None or not token.user.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > _LAST_USED_GRANULARITY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user
