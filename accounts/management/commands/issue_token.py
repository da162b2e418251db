from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import User
from accounts.services import token_issue
from common import actors


class Command(BaseCommand):
    help = "Issue a new API token for USERNAME and print it as the last line of stdout."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--create", action="store_true", help="create the user if it does not exist")
        parser.add_argument("--name", default="", help="a label for the token")
        parser.add_argument("--expires-in-days", type=int, default=None, help="expiry; default never")

    def handle(self, *args: Any, **options: Any) -> None:
        username: str = options["username"]
        user = User.objects.filter(username=username).first()
        if user is None:
            if not options["create"]:
                raise CommandError(f"No user {username!r}; pass --create to create it.")
            user = User.objects.create_user(username=username)
            self.stdout.write(f"Created user {username}.")
        days = options["expires_in_days"]
        issued = token_issue(
            user=user,
            name=options["name"],
            expires_in=timedelta(days=days) if days else None,
            actor=actors.cli("issue_token"),
        )
        self.stdout.write(issued.raw)
