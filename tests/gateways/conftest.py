"""Fixtures for the gateway adapters: a real sandbox gateway process, and charge requests.

No database: nothing here uses the ``db`` fixture.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from payments.gateways.base import ChargeRequest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 15.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SandboxProcess:
    """``python -m payments.sandbox_gateway --port <free>`` with its own ledger folder."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env |= {"GATEWAY_DATA_DIR": str(self.data_dir), "PYTHONUNBUFFERED": "1", "GATEWAY_LOG_LEVEL": "WARNING"}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "payments.sandbox_gateway", "--port", str(self.port)],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                pytest.fail(f"the sandbox gateway exited during start-up:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"the sandbox gateway did not answer /healthz in {START_TIMEOUT_SECONDS}s:\n{self.log()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- the ledger, as anyone can read it ---------------------------------------------------------------
    def set_faults(self, **faults: float) -> None:
        httpx.put(f"{self.url}/v1/faults", json=faults, timeout=5.0).raise_for_status()

    def charges_for_key(self, key: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/v1/charges", params={"idempotency_key": key}, timeout=5.0)
        response.raise_for_status()
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    def charges_for_payment(self, payment_id: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/v1/charges", params={"payment_id": payment_id}, timeout=5.0)
        response.raise_for_status()
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    def total_charges(self) -> int:
        response = httpx.get(f"{self.url}/v1/stats", timeout=5.0)
        response.raise_for_status()
        total: int = response.json()["total"]
        return total


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    root = tmp_path_factory.mktemp("sandbox")
    process = SandboxProcess(root / "data", root / "gateway.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def private_sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    """A gateway of the test's own, for tests that stop it."""
    process = SandboxProcess(tmp_path / "data", tmp_path / "gateway.log")
    process.start()
    yield process
    process.stop()


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
