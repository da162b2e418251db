"""Payment gateways: ``get_gateway()`` returns this process's adapter, chosen by ``settings.GATEWAY_BACKEND``.

- ``"sandbox"`` (default): ``payments.gateways.sandbox.SandboxGateway`` at ``settings.GATEWAY_URL``.
- ``"stripe"``: ``payments.gateways.stripe.StripeGateway`` with ``settings.STRIPE_API_KEY``.

The interface is ``payments.gateways.base.Gateway``; what every raw result means is in
``payments.gateways.classification``; ``docs/gateways.md`` explains both.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from payments.gateways.base import Gateway

__all__ = ["BACKENDS", "ProcessLocal", "build_gateway", "get_gateway", "reset_gateway_cache"]

T = TypeVar("T")

BACKENDS = ("sandbox", "stripe")
# Settings whose change (tests' override_settings) must rebuild the cached gateway.
_GATEWAY_SETTINGS = frozenset(
    {"GATEWAY_BACKEND", "GATEWAY_URL", "GATEWAY_TIMEOUT_SECONDS", "GATEWAY_MAX_CONCURRENCY", "STRIPE_API_KEY"}
)


class ProcessLocal(Generic[T]):
    """A value created on first use in each process, never inherited across ``fork()``.

    Celery's prefork pool forks workers from a parent that may already hold a gateway: sockets and
    threads copied into the child are unusable (or, worse, shared with the parent). Each process
    builds its own on first use; the parent's copy is dropped in the child, never closed there.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: tuple[int, T] | None = None
        self._locks: dict[int, threading.Lock] = {}

    def get(self) -> T:
        pid = os.getpid()
        current = self._value
        if current is not None and current[0] == pid:
            return current[1]
        # One lock per pid: a lock copied by fork() while another thread held it would never be released.
        with self._locks.setdefault(pid, threading.Lock()):
            current = self._value
            if current is None or current[0] != pid:
                current = (pid, self._factory())
                self._value = current
            return current[1]

    def pop(self) -> T | None:
        """Forget this process's value and return it (to be closed), or None if it was never created here."""
        current, self._value = self._value, None
        return current[1] if current is not None and current[0] == os.getpid() else None


def build_gateway(backend: str | None = None) -> Gateway:
    """A new adapter for ``backend`` (default ``settings.GATEWAY_BACKEND``); prefer ``get_gateway()``."""
    backend = (backend or settings.GATEWAY_BACKEND).strip().lower()
    concurrency: int | None = getattr(settings, "GATEWAY_MAX_CONCURRENCY", None)
    options: dict[str, Any] = {} if concurrency is None else {"concurrency": int(concurrency)}
    if backend == "sandbox":
        from payments.gateways.sandbox import SandboxGateway

        return SandboxGateway(**options)
    if backend == "stripe":
        from payments.gateways.stripe import StripeGateway

        return StripeGateway(**options)
    raise ImproperlyConfigured(f"GATEWAY_BACKEND must be one of {', '.join(BACKENDS)}, not {backend!r}")


_gateway: ProcessLocal[Gateway] = ProcessLocal(build_gateway)


def get_gateway() -> Gateway:
    """This process's gateway adapter, built on first use in each process (connections are pooled inside)."""
    return _gateway.get()


def reset_gateway_cache() -> None:
    """Drop this process's adapter (settings changed, tests) and close its connections."""
    gateway = _gateway.pop()
    close = getattr(gateway, "close", None)
    if close is not None:
        close()


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    if setting in _GATEWAY_SETTINGS:
        reset_gateway_cache()
