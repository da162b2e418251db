"""Fixtures for the gateway adapters: a real sandbox gateway process, and charge requests.

The gateway processes (``sandbox``, ``make_sandbox``) come from ``tests/conftest.py``.
No database: nothing here uses the ``db`` fixture.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from payments.gateways.base import ChargeRequest
from tests.sandbox_process import SandboxProcess


@pytest.fixture
def private_sandbox(make_sandbox: Callable[..., SandboxProcess]) -> SandboxProcess:
    """A gateway of the test's own, for tests that stop it."""
    return make_sandbox(GATEWAY_LOG_LEVEL="WARNING")


@pytest.fixture
def faults(sandbox: SandboxProcess) -> Iterator[Callable[..., None]]:
    """Set faults for one test; they are cleared afterwards even if the test fails."""
    yield sandbox.set_faults
    sandbox.set_faults()


@pytest.fixture
def make_request() -> Callable[..., ChargeRequest]:
    def make(**overrides: Any) -> ChargeRequest:
        values: dict[str, Any] = {
            "payment_id": str(uuid.uuid4()),
            "idempotency_key": f"pay_{uuid.uuid4().hex}:1",
            "amount": Decimal("125.50"),
            "currency": "EUR",
            "payment_method": "pm_card_visa",
        }
        values.update(overrides)
        return ChargeRequest(**values)

    return make
