"""Fixtures for the execution engine: a private RabbitMQ vhost, the sandbox gateway, worker and beat processes.

Process tests (``@pytest.mark.processes``) run the real ``celery worker``,
``celery beat`` and sandbox gateway as subprocesses against the pytest-django
*test* database and a RabbitMQ vhost of this test session, created with
``rabbitmqctl`` and deleted at the end, so nothing leaks between runs or
between people sharing a broker.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from accounts.models import User
from config.celery import app as celery_app
from payments.engine import execution
from payments.engine.execution import periodic_tasks_ensure
from payments.models import Payment
from payments.statuses import TERMINAL_STATUSES
from tests.factories import schedule_payment
from tests.sandbox_process import PROJECT_ROOT, SandboxProcess

START_TIMEOUT_SECONDS = 30.0


def wait_for(condition: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --- RabbitMQ vhost ---------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def _point_celery_at(url: str) -> None:
    # Celery reads CELERY_BROKER_URL from the environment before its own configuration
    # (celery.app.utils.Settings.broker_url): set both, or this process would keep publishing to,
    # and the engine fixture purging, the shared server's default vhost.
    os.environ["CELERY_BROKER_URL"] = url
    celery_app.conf.update(broker_url=url)
    app: Any = celery_app  # private attributes: drop connections made to the previous URL
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None


@contextmanager
def _private_vhost() -> Iterator[str]:
    """A new vhost on the server of ``CELERY_BROKER_URL``, deleted on exit; yields its URL."""
    base = settings.CELERY_BROKER_URL
    if not settings.BROKER_IS_AMQP:
        pytest.skip("the engine's process tests need RabbitMQ (CELERY_BROKER_URL=amqp://...)")
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is needed to create the test session's vhost")
    parts = urlsplit(base)
    vhost = f"spay_test_{os.getpid()}_{secrets.token_hex(3)}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
        yield urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, parts.fragment))
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """This session's vhost (same server and user as ``CELERY_BROKER_URL``); this process publishes there too."""
    with _private_vhost() as url:
        original = celery_app.conf.broker_url
        original_env = os.environ.get("CELERY_BROKER_URL")
        _point_celery_at(url)
        try:
            yield url
        finally:
            _point_celery_at(original)
            if original_env is None:
                os.environ.pop("CELERY_BROKER_URL", None)


@pytest.fixture
def spare_broker_url() -> Iterator[str]:
    """A fresh vhost for this test, for processes whose queues are declared differently (the other queue type)."""
    with _private_vhost() as url:
        yield url


# --- Sandbox gateway ----------------------------------------------------------------------------


class Gateway(SandboxProcess):
    """The session's sandbox gateway (tests/sandbox_process.py), with the engine's patience."""

    start_timeout = START_TIMEOUT_SECONDS
    http_timeout = 10.0

    def charges(self, payment_id: object) -> list[dict[str, Any]]:
        return self.charges_for_payment(str(payment_id))


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("engine-gateway")
    gw = Gateway(root / "data", root / "gateway.log")
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def use_gateway(gateway: Gateway, settings: Any) -> Iterator[Gateway]:
    """In-process code talks to the session's gateway; faults are cleared before and after."""
    settings.GATEWAY_BACKEND = "sandbox"
    settings.GATEWAY_URL = gateway.url
    gateway.clear_faults()
    yield gateway
    gateway.clear_faults()


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """What the sweep would publish, recorded instead of sent: for tests that call the services without a broker.

    Modules whose every test wants it: ``pytestmark = pytest.mark.usefixtures("published")``.
    """
    sent: list[tuple[str, Any]] = []

    def publish(task_name: str, groups: Any, **route: Any) -> int:
        sent.extend((task_name, group) for group in groups)
        return len(groups)

    monkeypatch.setattr(execution, "_publish", publish)
    return sent


# --- Payments ----------------------------------------------------------------------------------


@pytest.fixture
def payer() -> User:
    # Tests carry a django_db mark, so the database is open before this runs.
    return User.objects.create_user(username=f"payer-{secrets.token_hex(4)}")


MakePayment = Callable[..., Payment]


@pytest.fixture
def make_payment(payer: User) -> MakePayment:
    """Schedule a payment the way the API does (``payment_create``: row + first event)."""

    def make(*, due_in: float = 60.0, due_at: datetime | None = None, payment_method: str = "pm_card_visa") -> Payment:
        scheduled_for = due_at or timezone.now() + timedelta(seconds=due_in)
        return schedule_payment(payer, payment_method=payment_method, description="rent", scheduled_for=scheduled_for)

    return make


def wait_terminal(payment_ids: list[Any], *, timeout: float) -> dict[Any, Payment]:
    def all_terminal() -> dict[Any, Payment] | None:
        payments = {p.pk: p for p in Payment.objects.filter(pk__in=payment_ids)}
        if all(p.status in TERMINAL_STATUSES for p in payments.values()):
            return payments
        return None

    result: dict[Any, Payment] = wait_for(all_terminal, timeout=timeout, interval=0.2, what="terminal payments")
    return result


# --- Worker and beat processes ------------------------------------------------------------------------


@dataclass
class EngineProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill_hard(self) -> None:
        """SIGKILL the whole process group (the worker's main process and its pool children)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            pass


@dataclass
class Engine:
    """Starts worker and beat processes for one test; everything is stopped at teardown."""

    env: dict[str, str]
    tmp_path: Path
    processes: list[EngineProcess] = field(default_factory=list)

    def _start(self, kind: str, args: list[str], ready: str, extra_env: dict[str, str]) -> EngineProcess:
        name = f"{kind}{len(self.processes) + 1}"
        log_path = self.tmp_path / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", kind, *args],
                cwd=PROJECT_ROOT,
                env={**self.env, **extra_env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: SIGKILL reaches the pool children too
            )
        started = EngineProcess(name, process, log_path)
        self.processes.append(started)

        def is_ready() -> bool:
            assert started.alive(), f"{name} exited during start-up:\n{started.log()}"
            return ready in started.log()

        wait_for(is_ready, timeout=START_TIMEOUT_SECONDS, interval=0.1, what=f"{name} to start")
        return started

    def start_worker(self, *, queues: str = "sweep,execution,recovery,housekeeping", **extra_env: str) -> EngineProcess:
        """A worker (by default one consuming every queue; the Procfile splits recovery off into its own)."""
        name = f"engine-worker-{len(self.processes) + 1}-{secrets.token_hex(2)}@%h"
        args = ["--loglevel", "INFO", "-n", name, "--queues", queues, "--concurrency", "2"]
        return self._start("worker", [*args, "--without-mingle", "--without-gossip"], "ready.", extra_env)

    def start_beat(self, **extra_env: str) -> EngineProcess:
        pidfile = self.tmp_path / f"beat{len(self.processes) + 1}.pid"
        args = ["--loglevel", "INFO", "--pidfile", str(pidfile), "-s", str(self.tmp_path / "beat-schedule")]
        # Settings quiet celery.beat; its "Sending due task" lines are how a test sees a beat at work.
        return self._start("beat", args, "Sending due task", {"CELERY_BEAT_LOG_LEVEL": "INFO", **extra_env})

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.log()[-20000:]}" for p in self.processes)


def _database_url() -> str:
    db = connection.settings_dict
    user = quote(db["USER"] or "postgres", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    host = db["HOST"] or "127.0.0.1"
    port = db["PORT"] or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


@pytest.fixture
def engine(
    broker_url: str, use_gateway: Gateway, transactional_db: None, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Engine]:
    """Worker/beat processes on the test database, this session's vhost and gateway; queues purged first."""
    assert connection.vendor == "postgresql", "process tests run on PostgreSQL"
    # pytest-django flushed the tables after the previous transactional test: the beat rows go with them.
    periodic_tasks_ensure()
    celery_app.control.purge()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "CELERY_", "DATABASE_"))}
    env |= {
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": broker_url,
        "GATEWAY_URL": use_gateway.url,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
    }
    started = Engine(env=env, tmp_path=tmp_path)
    yield started
    started.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(started.logs())  # shown by pytest for the failed test only


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
