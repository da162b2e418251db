"""The admin site requires a second factor: a verified django-otp (TOTP) device.

``config/urls.py`` imports this module before it mounts ``admin.site``. Changing the
class of the existing default site (rather than creating a new one) keeps every
``admin.register`` call, the ``admin:`` URL namespace and ``admin.site`` references
working. A staff user gets a device with ``manage.py add_staff_totp USERNAME``.
"""

from __future__ import annotations

from django.contrib import admin
from django_otp.admin import OTPAdminSite

admin.site.__class__ = OTPAdminSite
