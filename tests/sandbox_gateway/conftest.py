"""Fixtures for the sandbox gateway's black-box tests: no Django, no database.

The gateway processes (``sandbox``, ``make_sandbox``) come from ``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.sandbox_process import SandboxProcess


@pytest.fixture
def client(sandbox: SandboxProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=10.0) as http:
        yield http


@pytest.fixture(autouse=True)
def _no_faults(sandbox: SandboxProcess) -> Iterator[None]:
    # A failed fault test must not leak its faults into the next test.
    sandbox.clear_faults()
    yield
    sandbox.clear_faults()
