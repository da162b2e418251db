"""Sandbox payment gateway: a standalone HTTP process standing in for an external card gateway.

Run it with ``python -m sandbox_gateway``; see ``docs/sandbox-gateway.md``.
This package must never import Django: it is a separate process with its own SQLite ledger.
"""
