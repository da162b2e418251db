"""Give a staff user a TOTP device (the admin's second factor) and print its provisioning URI."""

from __future__ import annotations

import io
from typing import Any

import qrcode
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import User
from audit.services import audit_record
from common import actors


class Command(BaseCommand):
    help = (
        "Create a TOTP device for staff user USERNAME and print its otpauth:// provisioning URI as the "
        "last line of stdout (it holds the secret: hand it to that person only)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="authenticator", help="a label for the device")
        parser.add_argument("--replace", action="store_true", help="delete the user's existing TOTP devices first")
        parser.add_argument("--qr", action="store_true", help="also print the URI as a QR code for the terminal")

    def handle(self, *args: Any, **options: Any) -> None:
        username: str = options["username"]
        user = User.objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        if not user.is_staff:
            raise CommandError(f"{username!r} is not staff: only staff sign in to the admin.")
        with transaction.atomic():
            existing = TOTPDevice.objects.select_for_update().filter(user=user)
            replaced = len(existing)
            if replaced and not options["replace"]:
                raise CommandError(f"{username!r} already has a TOTP device; pass --replace to issue a new one.")
            existing.delete()
            device = TOTPDevice.objects.create(user=user, name=options["name"], confirmed=True)
            audit_record(
                actor=actors.cli("add_staff_totp"),
                action="staff_totp.created",
                target=device,
                data={"user_id": user.pk, "replaced_devices": replaced},
            )
        uri: str = device.config_url
        self.stderr.write(f"TOTP device {device.persistent_id} created for {username}. Scan or enter this URI once:")
        if options["qr"]:
            code = qrcode.QRCode(border=1)
            code.add_data(uri)
            picture = io.StringIO()
            code.print_ascii(out=picture, invert=True)
            self.stdout.write(picture.getvalue())
        self.stdout.write(uri)
