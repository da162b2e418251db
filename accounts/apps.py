from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and API tokens"

    def ready(self) -> None:
        from auditlog.registry import auditlog

        from .models import ApiToken, User

        # Who could act, and with which credentials: every change is audited.
        auditlog.register(User, exclude_fields=["password", "last_login"])
        auditlog.register(ApiToken, exclude_fields=["token_hash", "last_used_at"])
