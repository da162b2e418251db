from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Payments"

    def ready(self) -> None:
        # The operations admin (dead letters, circuit) lives apart from payments/admin.py.
        from . import (
            admin_operations,  # noqa: F401
            timing,  # noqa: F401  (registers the timing settings' system checks)
        )
