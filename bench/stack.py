"""Starts and stops the real stack: a fresh database and vhost, gateway, gunicorn, Celery worker and beat.

Every process runs in its own session (process group), so stopping one stops
its children too (gunicorn's workers, Celery's pool), and a Ctrl-C in the
terminal reaches only the harness, which then stops them in order. The
database and the vhost are created fresh for each run and dropped at the end
(``--keep`` keeps them for inspection).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql

logger = logging.getLogger("bench")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0
# One worker takes every queue here (the Procfile runs recovery apart; the bench measures the due path).
WORKER_QUEUES = "sweep,execution,recovery,housekeeping"
# Variables the harness sets for every process; inherited values of these are dropped.
_OWNED_PREFIXES = ("DATABASE_URL", "CELERY_", "GATEWAY_", "DJANGO_SETTINGS_MODULE", "SENTRY_", "BENCH_", "REDIS_URL")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(path, safe=""), parts.query, ""))


@dataclass
class StackOptions:
    database_url: str  # any database on the server; the run uses its own database `db_name`
    db_name: str
    broker_url: str  # any vhost on the server; the run uses its own vhost `vhost`
    vhost: str
    web_workers: int
    web_threads: int
    worker_concurrency: int
    worker_pool: str
    gateway_latency_ms: int
    redis_url: str = ""  # the throttles' cache, as production runs it ("": the file cache)
    extra_env: dict[str, str] = field(default_factory=dict)
    keep: bool = False


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL if it has not ended in time."""
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0fs: SIGKILL", self.name, STOP_TIMEOUT_SECONDS)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        # Pool children left behind by a killed parent are still in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)


class Stack:
    def __init__(self, options: StackOptions, run_dir: Path) -> None:
        self.options = options
        self.run_dir = run_dir
        self.processes: dict[str, Process] = {}
        self.web_port = free_port()
        self.gateway_port = free_port()
        self.database_url = with_path(options.database_url, options.db_name)
        self.broker_url = with_path(options.broker_url, options.vhost)
        self.broker = urlsplit(options.broker_url)
        self._database_created = False
        self._vhost_created = False
        from cryptography.fernet import Fernet

        self.env = {k: v for k, v in os.environ.items() if not k.startswith(_OWNED_PREFIXES)}
        self.env |= {
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "DATABASE_URL": self.database_url,
            "CELERY_BROKER_URL": self.broker_url,
            "SECRET_KEY": secrets.token_urlsafe(48),
            "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "FIELD_HMAC_KEY": secrets.token_urlsafe(48),
            "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
            "SECURE_SSL_REDIRECT": "False",
            "GATEWAY_BACKEND": "sandbox",
            "GATEWAY_URL": f"http://127.0.0.1:{self.gateway_port}",
            "BENCH_CACHE_DIR": str(run_dir / "cache"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(PROJECT_ROOT),
        }
        if options.redis_url:
            self.env["REDIS_URL"] = options.redis_url
        self.env.setdefault("LOG_LEVEL", "INFO")
        self.env |= options.extra_env

    # --- URLs -----------------------------------------------------------------------------------

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.broker.hostname or '127.0.0.1'}:15672/api"

    @property
    def management_auth(self) -> tuple[str, str]:
        return unquote(self.broker.username or "guest"), unquote(self.broker.password or "guest")

    def maintenance_connection(self) -> psycopg.Connection[Any]:
        """A connection to the server's ``postgres`` database (statistics, CREATE/DROP DATABASE)."""
        return psycopg.connect(with_path(self.options.database_url, "postgres"), autocommit=True)

    def database_connection(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.database_url, autocommit=True)

    # --- database and vhost ---------------------------------------------------------------------

    def create_database(self) -> None:
        if self.options.redis_url:
            import redis

            # Throttle counters of an earlier run must not count against this one.
            redis.Redis.from_url(self.options.redis_url, socket_connect_timeout=5).flushdb()
        name = sql.Identifier(self.options.db_name)
        with self.maintenance_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
        self._database_created = True
        self._run("migrate", [sys.executable, "manage.py", "migrate", "--noinput"], timeout=300, log="migrate.log")

    def drop_database(self) -> None:
        if not self._database_created:
            return
        with self.maintenance_connection() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.options.db_name))
            )
        self._database_created = False

    def _rabbitmqctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        program = shutil.which("rabbitmqctl")
        if program is None:
            raise RuntimeError("rabbitmqctl is needed to create the benchmark's vhost")
        return subprocess.run(  # noqa: S603 - fixed program, arguments of our own
            [program, "-q", *args], check=check, capture_output=True, text=True, timeout=120
        )

    def create_vhost(self) -> None:
        self._rabbitmqctl("delete_vhost", self.options.vhost, check=False)
        self._rabbitmqctl("add_vhost", self.options.vhost)
        self._vhost_created = True
        user = self.management_auth[0]
        self._rabbitmqctl("set_permissions", "-p", self.options.vhost, user, ".*", ".*", ".*")

    def delete_vhost(self) -> None:
        if self._vhost_created:
            self._rabbitmqctl("delete_vhost", self.options.vhost, check=False)
            self._vhost_created = False

    def management_available(self) -> bool:
        """RabbitMQ's management API answers (enabling the plugin once if the broker is on this machine)."""

        def answers() -> bool:
            try:
                response = httpx.get(f"{self.management_url}/overview", auth=self.management_auth, timeout=3)
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        if answers():
            return True
        plugins = shutil.which("rabbitmq-plugins")
        if self.broker.hostname in ("127.0.0.1", "localhost") and plugins:
            logger.info("enabling rabbitmq_management (queue statistics)")
            subprocess.run(  # noqa: S603 - fixed program and arguments
                [plugins, "enable", "--quiet", "rabbitmq_management"],
                check=False,
                capture_output=True,
                timeout=120,
            )
            try:
                return bool(wait_for(answers, timeout=20, what="the RabbitMQ management API", interval=1))
            except TimeoutError:
                return False
        return False

    # --- processes --------------------------------------------------------------------------------

    def _run(self, name: str, args: list[str], *, timeout: float, log: str) -> None:
        with (self.run_dir / log).open("ab") as out:
            result = subprocess.run(  # noqa: S603 - our own interpreter and arguments
                args, cwd=PROJECT_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        if result.returncode != 0:
            raise RuntimeError(f"{name} failed ({result.returncode}): see {self.run_dir / log}")

    def _start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Process:
        log_path = self.run_dir / f"{name}.log"
        with log_path.open("ab") as out:
            popen = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                args,
                cwd=PROJECT_ROOT,
                env={**self.env, **(extra_env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(name, popen, log_path)
        self.processes[name] = process
        return process

    def _wait_ready(self, process: Process, ready: Callable[[], bool]) -> None:
        def check() -> bool:
            if not process.alive():
                raise RuntimeError(f"{process.name} exited during start-up:\n{process.log_tail()}")
            return ready()

        wait_for(check, timeout=START_TIMEOUT_SECONDS, what=f"{process.name} to start")

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start_gateway(self) -> Process:
        faults = f'{{"latency_ms": {int(self.options.gateway_latency_ms)}}}'
        process = self._start(
            "gateway",
            [sys.executable, "-m", "sandbox_gateway", "--port", str(self.gateway_port)],
            {"GATEWAY_DATA_DIR": str(self.run_dir / "gateway"), "GATEWAY_FAULTS": faults},
        )
        self._wait_ready(process, lambda: self._http_ok(f"{self.gateway_url}/healthz"))
        return process

    def start_web(self) -> Process:
        args = [sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{self.web_port}"]
        args += ["--workers", str(self.options.web_workers), "--threads", str(self.options.web_threads)]
        args += ["--access-logfile", "-"]
        process = self._start("web", args)
        self._wait_ready(process, lambda: self._http_ok(f"{self.web_url}/healthz"))
        return process

    def start_worker(self) -> Process:
        args = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO"]
        args += ["--queues", WORKER_QUEUES, "-n", self.worker_name]
        args += ["--pool", self.options.worker_pool, "--concurrency", str(self.options.worker_concurrency)]
        process = self._start("worker", args)
        self._wait_ready(process, lambda: "ready." in process.log_tail(100_000))
        return process

    @property
    def worker_name(self) -> str:
        return f"bench-worker-{self.options.vhost}@{socket.gethostname()}"

    def start_beat(self) -> Process:
        args = [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO"]
        args += ["--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"]
        args += ["--pidfile", str(self.run_dir / "beat.pid"), "-s", str(self.run_dir / "beat-schedule")]
        pidfile = self.run_dir / "beat.pid"
        pidfile.unlink(missing_ok=True)
        process = self._start("beat", args)
        # Beat logs nothing per tick (config/settings/base.py quiets it): its pidfile says it is up.
        self._wait_ready(process, pidfile.exists)
        time.sleep(1.0)
        self._wait_ready(process, lambda: True)
        return process

    def stop(self, name: str) -> None:
        process = self.processes.get(name)
        if process is not None:
            process.stop()

    def stop_all(self) -> None:
        # Beat first (no new ticks), then the worker (finishes its tasks), then web and gateway.
        for name in ("beat", "worker", "web", "gateway"):
            try:
                self.stop(name)
            except Exception:
                logger.exception("stopping %s", name)
        for process in self.processes.values():
            process.stop()

    @contextmanager
    def running(self) -> Iterator[Stack]:
        """Database, vhost and every process; everything is stopped and removed on the way out."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "cache").mkdir(exist_ok=True)
            logger.info("creating database %s and vhost %s", self.options.db_name, self.options.vhost)
            self.create_vhost()
            self.create_database()
            self.start_gateway()
            self.start_web()
            self.start_worker()
            self.start_beat()
            logger.info(
                "stack up: web %s (%dx%d), worker %s x%d, beat, gateway %s (latency %d ms)",
                self.web_url,
                self.options.web_workers,
                self.options.web_threads,
                self.options.worker_pool,
                self.options.worker_concurrency,
                self.gateway_url,
                self.options.gateway_latency_ms,
            )
            yield self
        finally:
            # A second Ctrl-C must not leave processes behind: the clean-up runs to its end.
            in_main = threading.current_thread() is threading.main_thread()
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
            try:
                self.stop_all()
                if not self.options.keep:
                    for step in (self.drop_database, self.delete_vhost):
                        try:
                            step()
                        except Exception:
                            logger.exception("cleanup: %s", step.__name__)
            finally:
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)
