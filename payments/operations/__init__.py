"""Operator tooling: re-driving and resolving dead-lettered payments, recording
the broker's dead-letter messages, and their admin pages (docs/operations.md)."""
