from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Payments"

    def ready(self) -> None:
        # The operations admin (dead letters, circuit) lives apart from payments/admin.py.
        # The Celery tasks live with the engine, where Celery's autodiscovery (``<app>.tasks``)
        # does not look: registered here, in every process that sets Django up.
        from .engine import (
            tasks,  # noqa: F401
            timing,  # noqa: F401  (registers the timing settings' system checks)
        )
        from .operations import admin  # noqa: F401
