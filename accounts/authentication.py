from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from .services import token_authenticate


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <token>`` against hashed, expiring, revocable tokens."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != self.keyword.lower() or not raw.strip() or " " in raw.strip():
            raise exceptions.AuthenticationFailed("Invalid authorization header.")
        user = token_authenticate(raw.strip())
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid or expired token.")
        return (user, None)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
