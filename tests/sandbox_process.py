"""The real sandbox gateway as a subprocess, for tests: no Django, no database.

The fixtures that start it (``sandbox`` for the session, ``make_sandbox`` for a test's own)
are in ``tests/conftest.py``; ``tests/gateways`` and ``tests/sandbox_gateway`` both use them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SandboxProcess:
    """``python -m sandbox_gateway --port <free>`` with its own ledger folder and log file.

    The port is chosen once: a restarted process (``stop()`` then ``start()``) answers at the same
    ``url``, on the same ledger, as a gateway restarted by a process manager would.
    """

    start_timeout = START_TIMEOUT_SECONDS  # to answer /healthz
    http_timeout = 5.0  # for each ledger request

    def __init__(self, data_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self._process is None, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env |= {"GATEWAY_DATA_DIR": str(self.data_dir), "PYTHONUNBUFFERED": "1", **self.extra_env}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "sandbox_gateway", "--port", str(self.port)],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                pytest.fail(f"the sandbox gateway exited during start-up:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"the sandbox gateway did not answer /healthz within {self.start_timeout}s:\n{self.log()}")

    def stop(self) -> int | None:
        """SIGTERM, as a process manager would; the exit code (None if it was not running).

        A process still running after ``STOP_TIMEOUT_SECONDS`` is killed: its (negative) code says so.
        """
        process, self._process = self._process, None
        if process is None:
            return None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- the ledger, as anyone can read it ---------------------------------------------------------------
    def set_faults(self, **faults: float) -> None:
        httpx.put(f"{self.url}/v1/faults", json=faults, timeout=self.http_timeout).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(f"{self.url}/v1/faults", timeout=self.http_timeout).raise_for_status()

    def charges_for_key(self, key: str) -> list[dict[str, Any]]:
        return self._charges({"idempotency_key": key})

    def charges_for_payment(self, payment_id: str) -> list[dict[str, Any]]:
        return self._charges({"payment_id": payment_id})

    def total_charges(self) -> int:
        response = httpx.get(f"{self.url}/v1/stats", timeout=self.http_timeout)
        response.raise_for_status()
        total: int = response.json()["total"]
        return total

    def _charges(self, params: dict[str, str]) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/v1/charges", params=params, timeout=self.http_timeout)
        response.raise_for_status()
        results: list[dict[str, Any]] = response.json()["results"]
        return results
