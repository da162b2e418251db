"""Shared fixtures: users, their tokens and API clients (owner / outsider)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from accounts.models import User
from accounts.services import token_issue


@pytest.fixture
def make_user(db: None) -> Callable[..., User]:
    counter = iter(range(1, 1_000_000))

    def make(username: str | None = None) -> User:
        return User.objects.create_user(username=username or f"user{next(counter)}")

    return make


@pytest.fixture
def make_client() -> Callable[[User], APIClient]:
    def make(user: User) -> APIClient:
        client = APIClient()
        raw = token_issue(user=user, actor="test").raw
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make


@pytest.fixture
def owner(make_user: Callable[..., User]) -> User:
    return make_user("alice")


@pytest.fixture
def outsider(make_user: Callable[..., User]) -> User:
    return make_user("mallory")


@pytest.fixture
def api(owner: User, make_client: Callable[[User], APIClient]) -> APIClient:
    return make_client(owner)


@pytest.fixture
def outsider_api(outsider: User, make_client: Callable[[User], APIClient]) -> APIClient:
    return make_client(outsider)
