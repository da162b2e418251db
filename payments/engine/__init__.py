"""The execution engine: the sweep that claims due payments, executing and
reconciling them with the gateway, the retry policy, the circuit breaker and the
Celery tasks that run it all (docs/execution.md)."""
