"""Payment gateways: ``get_gateway()`` returns this process's adapter, chosen by ``settings.GATEWAY_BACKEND``.

- ``"sandbox"`` (default): ``payments.gateways.sandbox.SandboxGateway`` at ``settings.GATEWAY_URL``.
- ``"stripe"``: ``payments.gateways.stripe.StripeGateway`` with ``settings.STRIPE_API_KEY``.

The interface is ``payments.gateways.base.Gateway``; what every raw result means is in
``payments.gateways.classification``; ``docs/gateways.md`` explains both.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from payments.gateways.base import Gateway, ProcessLocal

__all__ = ["BACKENDS", "ProcessLocal", "build_gateway", "get_gateway", "reset_gateway_cache"]

BACKENDS = ("sandbox", "stripe")
# Settings whose change (tests' override_settings) must rebuild the cached gateway.
_GATEWAY_SETTINGS = frozenset(
    {"GATEWAY_BACKEND", "GATEWAY_URL", "GATEWAY_TIMEOUT_SECONDS", "GATEWAY_MAX_CONCURRENCY", "STRIPE_API_KEY"}
)


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
