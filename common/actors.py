"""Who did something: the ``actor`` of ``PaymentEvent`` and ``AuditEvent``, spelled in one place.

``user:<id>`` (an API user), ``staff:<id>`` (a person in the admin), ``cli:<name>`` (a
management command, named after the login that ran it or after the command),
``system:<component>`` (the engine: ``sweep``, ``worker``, ``reconciler``, ``circuit``).
"""

from __future__ import annotations

import getpass


def user(user_id: object) -> str:
    return f"user:{user_id}"


def staff(user_id: object) -> str:
    return f"staff:{user_id}"


def cli(name: str) -> str:
    return f"cli:{name}"


def cli_login() -> str:
    """``cli:<login>`` of the person running a management command (``cli:unknown`` without one)."""
    try:
        return cli(getpass.getuser())
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return cli("unknown")


def system(component: str) -> str:
    return f"system:{component}"
