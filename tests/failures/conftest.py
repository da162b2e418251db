"""Failure-handling tests reuse the execution engine's fixtures: vhost, sandbox gateway, worker and beat processes.

Imported rather than moved, so ``tests/engine`` stays as it is. A run of both folders starts
one vhost and one sandbox gateway for each (their session fixtures are separate objects):
these tests switch the gateway's faults a lot, and get a ledger of their own.
"""

from __future__ import annotations

from tests.engine.conftest import *  # noqa: F403
