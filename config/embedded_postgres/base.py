"""Django's PostgreSQL backend, connecting to the embedded server (started on first use)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.backends.postgresql import base

from . import ensure_running


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        endpoint = ensure_running(Path(settings.VAR_DIR) / "postgres")
        params |= {"host": str(endpoint.socket_dir), "port": endpoint.port}
        return params
