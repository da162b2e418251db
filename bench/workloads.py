"""The workloads of issue 6: sweep cost vs backlog, the in-process profile, burst (with the no-op task
reference), steady and API.

Each returns a JSON-ready dict. Burst and steady payments are created through the API with an
``Idempotency-Key`` (or copied with SQL, ``--create-via sql``); outcomes are read from the database at
the end (lateness is ``executed_at - scheduled_for``, the submission instant is the ``submitting``
event) and cross-checked against the sandbox gateway's ledger.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from . import loadgen, pyspy
from .context import PG_STATS_LAG_SECONDS, RABBIT_STATS_LAG_SECONDS, Bench, utc
from .profiler import cpu_profile
from .rows import DUE_NOW_SQL, FUTURE_SQL, insert_payments, template_payment
from .stats import percentile, summarize

logger = logging.getLogger("bench")

# The targets (docs/performance.md).
TARGET_BURST_RATE = 1000.0
TARGET_BURST_RATE_SLOW_GATEWAY = 500.0
TARGET_NOOP_RATIO = 0.25
TARGET_LATENESS_P99_S = 1.0
TARGET_SWEEP_RATIO = 1.2
TARGET_POST_RPS = 500.0
TARGET_POST_P99_MS = 50.0


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _per(amount: float, count: int, digits: int = 3) -> float | None:
    return round(amount / count, digits) if count else None


# --- outcomes -----------------------------------------------------------------------------------------


def execution_timings(b: Bench, ids: Sequence[str]) -> list[tuple[float, float | None, float | None, str]]:
    """(scheduled_for, executed_at, first submission, status) per payment, as epoch seconds."""
    rows = b.query(
        """
        SELECT EXTRACT(EPOCH FROM p.scheduled_for)::float8, EXTRACT(EPOCH FROM p.executed_at)::float8,
               EXTRACT(EPOCH FROM s.at)::float8, p.status
        FROM payments_payment AS p
        LEFT JOIN LATERAL (
            SELECT min(e.at) AS at FROM payments_paymentevent AS e
            WHERE e.payment_id = p.id AND e.to_status = 'submitting'
        ) AS s ON true
        WHERE p.id = ANY(%s::uuid[])
        """,
        [list(ids)],
    )
    return [(float(r[0]), r[1], r[2], str(r[3])) for r in rows]


def outcome_summary(b: Bench, ids: Sequence[str], counts: dict[str, int]) -> dict[str, Any]:
    """Lateness, early executions, terminal states, and the gateway ledger's view of the same payments."""
    from payments.statuses import TERMINAL_STATUSES, Status

    rows = execution_timings(b, ids)
    lateness = [executed - due for due, executed, _, _ in rows if executed is not None]
    submit_lateness = [submitted - due for due, _, submitted, _ in rows if submitted is not None]
    executed_early = sum(1 for value in lateness if value < 0)
    submitted_early = sum(1 for value in submit_lateness if value < 0)
    terminal = sum(n for s, n in counts.items() if s in TERMINAL_STATUSES)
    succeeded = counts.get(Status.SUCCEEDED, 0)
    return {
        "payments": len(ids),
        "statuses": dict(sorted(counts.items())),
        "terminal": terminal,
        "non_terminal": len(ids) - terminal,
        "all_terminal": terminal == len(ids),
        "succeeded": succeeded,
        "executed_early": executed_early,
        "submitted_early": submitted_early,
        "lateness_s": summarize(lateness),
        "submit_lateness_s": summarize(submit_lateness),
        "_rows": rows,  # for the plots; dropped from the JSON
    }


def check_ledger(b: Bench, summary: dict[str, Any], sample_ids: Sequence[str]) -> dict[str, Any]:
    """The ledger was reset before the workload: it must hold exactly one charge per succeeded payment."""
    stats = b.gateway_stats()
    doubles = 0
    for payment_id in sample_ids:
        if len(b.gateway_charges(payment_id)) > 1:
            doubles += 1
    return {
        "charges": stats.get("total"),
        "charges_succeeded": stats.get("succeeded"),
        "charges_equal_succeeded_payments": stats.get("total") == summary["succeeded"],
        "sampled_payments": len(sample_ids),
        "sampled_charged_twice": doubles,
    }


# --- windows: CPU, PostgreSQL, RabbitMQ -----------------------------------------------------------------


class Window:
    """Counters at the start and end of a phase: CPU per component, pg_stat_database, RabbitMQ."""

    def __init__(self, b: Bench, name: str) -> None:
        self.b, self.name = b, name
        self.start = time.time()
        self.end: float | None = None
        self.pg0 = b.pg_snapshot()
        self.tables0 = b.table_snapshot()
        self.rb0 = b.rabbit_snapshot()
        self.pg1: dict[str, int] | None = None
        self.tables1: dict[str, dict[str, int]] = {}
        self.rb1: dict[str, Any] | None = None

    def close(self, *, wait_for_stats: bool = False) -> Window:
        self.end = time.time()
        if wait_for_stats and self.b.sizes.wait_for_stats:
            # Counters arrive late (idle PostgreSQL backends flush after 10 s, RabbitMQ samples every 5 s).
            time.sleep(max(PG_STATS_LAG_SECONDS, RABBIT_STATS_LAG_SECONDS))
        self.pg1 = self.b.pg_snapshot()
        self.tables1 = self.b.table_snapshot()
        self.rb1 = self.b.rabbit_snapshot()
        return self

    def report(self, payments: int, *, cpu_end: float | None = None) -> dict[str, Any]:
        assert self.end is not None
        assert self.pg1 is not None
        elapsed = self.end - self.start
        counters_elapsed = time.time() - self.start  # the counters were read after the stats wait
        pg = {k: self.pg1[k] - self.pg0.get(k, 0) for k in self.pg1}
        xacts = pg["xact_commit"] + pg["xact_rollback"]
        # Net of what an idle stack does meanwhile (beat's ticks, the harness's polling): only meaningful
        # when the counters were given time to arrive.
        net = self.b.sizes.wait_for_stats and "pg_xacts_per_s" in self.b.idle_rates
        idle_xacts = self.b.idle_rates.get("pg_xacts_per_s", 0.0) * counters_elapsed
        cpu = self.b.sampler.window(self.start, cpu_end or self.end)
        rabbit = Bench.rabbit_delta(self.rb0, self.rb1)
        messages = None
        if rabbit is not None:
            idle_messages = self.b.idle_rates.get("rabbit_publish_per_s", 0.0) * counters_elapsed
            messages = {
                "published": rabbit["vhost"].get("publish", 0),
                "published_per_payment": _per(rabbit["vhost"].get("publish", 0), payments),
                "published_per_payment_net_of_idle": (
                    _per(rabbit["vhost"].get("publish", 0) - idle_messages, payments) if net else None
                ),
                "enqueued_per_payment": _per(sum(rabbit["enqueued_per_queue"].values()), payments),
                "delivered_per_payment": _per(rabbit["vhost"].get("deliver_get", 0), payments),
                "detail": rabbit,
            }
        return {
            "seconds": round(elapsed, 3),
            "payments": payments,
            "cpu": cpu,
            "cpu_ms_per_payment": {k: _per(v * 1000, payments, 2) for k, v in cpu.get("cpu_seconds", {}).items()},
            "postgres": {
                "transactions": xacts,
                "transactions_per_payment": _per(xacts, payments),
                "transactions_per_payment_net_of_idle": (
                    _per(xacts - idle_xacts, payments) if net and xacts >= idle_xacts else None
                ),
                "rows_inserted_per_payment": _per(pg["tup_inserted"], payments),
                "rows_updated_per_payment": _per(pg["tup_updated"], payments),
                "counters": pg,
                "tables": self._tables(),
            },
            "rabbitmq": messages,
        }

    def _tables(self) -> dict[str, dict[str, int]]:
        """Per table, what changed: sequential scans and the rows they read tell which queries scan."""
        changed = {}
        for name, after in self.tables1.items():
            before = self.tables0.get(name, {})
            delta = {k: v - before.get(k, 0) for k, v in after.items()}
            if any(delta.values()):
                changed[name] = delta
        return dict(
            sorted(changed.items(), key=lambda item: -(item[1].get("seq_tup_read", 0) + item[1].get("idx_tup_read", 0)))
        )


def measure_idle(b: Bench, seconds: float) -> dict[str, Any]:
    """Transactions and messages per second when nothing is due (beat ticking, harness polling)."""
    window = Window(b, "idle")
    time.sleep(seconds)
    window.close(wait_for_stats=True)
    assert window.pg1 is not None
    assert window.end is not None
    elapsed = time.time() - window.start
    xacts = (window.pg1["xact_commit"] - window.pg0["xact_commit"]) + (
        window.pg1["xact_rollback"] - window.pg0["xact_rollback"]
    )
    b.idle_rates["pg_xacts_per_s"] = xacts / elapsed
    rabbit = Bench.rabbit_delta(window.rb0, window.rb1)
    if rabbit is not None:
        b.idle_rates["rabbit_publish_per_s"] = rabbit["vhost"].get("publish", 0) / elapsed
    return {
        "seconds": round(elapsed, 3),
        "pg_xacts_per_s": round(b.idle_rates["pg_xacts_per_s"], 2),
        "rabbit_publish_per_s": _round(b.idle_rates.get("rabbit_publish_per_s"), 2),
        "cpu": b.sampler.window(window.start, window.end),
    }


# --- 1. burst -------------------------------------------------------------------------------------------


def run_burst(b: Bench) -> dict[str, Any]:
    n = b.fit_creation(b.sizes.payments, b.sizes.burst_creation_budget_seconds, "burst")
    b.gateway_reset()
    due_ts = b.plan_due_instant(n)
    logger.info("burst: %d payments due at %s (in %.0fs)", n, utc(due_ts).isoformat(), due_ts - time.time())

    creation = Window(b, "creation")
    created = b.create_payments(label="burst", count=n, due=utc(due_ts), stop_at=b.creation_deadline(due_ts))
    creation.close()
    ids = created.created
    logger.info("burst: created %d at %.0f/s; %.0fs to the due instant", len(ids), created.rate, due_ts - time.time())
    if created.stopped_early or created.rejected:
        b.notes.append(f"burst: creation fell behind or was rejected: {created.as_dict()}")
    if b.sizes.wait_for_stats:
        time.sleep(min(PG_STATS_LAG_SECONDS, max(0.0, due_ts - time.time() - b.lookahead_seconds())))

    execution = Window(b, "execution")
    b.sleep_until(due_ts)
    all_terminal, counts, finished = b.wait_terminal(
        ids, timeout=b.sizes.drain_timeout_seconds, what="burst", due_until=utc(due_ts)
    )
    execution.close(wait_for_stats=True)

    summary = outcome_summary(b, ids, counts)
    rows = summary.pop("_rows")
    executed = sorted(e for _, e, _, _ in rows if e is not None)
    last = executed[-1] if executed else finished
    drain = max(last - due_ts, 1e-3)
    rate = len(executed) / drain
    # The rate once execution is under way, from 10 % to 90 % of the payments executed.
    steady_rate = None
    if len(executed) >= 20:
        p10, p90 = percentile(executed, 10), percentile(executed, 90)
        if p90 > p10:
            steady_rate = 0.8 * len(executed) / (p90 - p10)
    seconds = math.ceil(drain) + 1
    per_second = [0] * seconds
    for e in executed:
        per_second[min(seconds - 1, max(0, int(e - due_ts)))] += 1

    ledger = check_ledger(b, summary, ids[:: max(1, len(ids) // 200)])
    noop = noop_reference(b)
    ratio = rate / noop["tasks_per_s"] if noop.get("tasks_per_s") else None
    result = {
        "payments_requested": n,
        "due_at": utc(due_ts).isoformat(),
        "creation": {**created.as_dict(), **creation.report(len(ids))},
        **summary,
        "timed_out": not all_terminal,
        "drain_seconds": round(drain, 3),
        "first_execution_after_due_s": _round(executed[0] - due_ts if executed else None),
        "executions_per_s": round(rate, 1),
        "executions_per_s_10_to_90": _round(steady_rate, 1),
        "noop_reference": noop,
        "ratio_to_noop": _round(ratio),
        "ledger": ledger,
        "execution": execution.report(len(executed), cpu_end=last),
        # What the machine did while the payments were executing (the due instant to the last one).
        "drain_cpu": b.sampler.window(due_ts, last),
        "series": {"executions_per_second": per_second},
        "_lateness": [e - d for d, e, _, _ in rows if e is not None],
    }
    return result


def noop_reference(b: Bench) -> dict[str, Any]:
    """No-op tasks/s on the same workers: queued while nobody consumes, then one consumer is added."""
    from django.conf import settings
    from kombu import Exchange, Queue

    from bench.tasks import NOOP_TASK
    from config.celery import TASK_EXCHANGE, app

    count = b.sizes.noop_tasks
    arguments = {"x-queue-type": settings.BROKER_QUEUE_TYPE} if settings.BROKER_IS_AMQP else {}
    queue = Queue(
        "bench_noop",
        Exchange(TASK_EXCHANGE, type="topic", durable=True),
        routing_key="bench_noop",
        durable=True,
        queue_arguments=arguments,
    )
    worker = b.stack.worker_name
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        queue(channel).declare()
        published = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for index in range(count):
                app.send_task(NOOP_TASK, args=[index], queue=cast(Any, queue), producer=producer)
        publish_seconds = time.perf_counter() - published

        def ready() -> int:
            return int(channel.queue_declare(queue="bench_noop", passive=True).message_count)

        queued = ready()
        points: list[tuple[float, int]] = []
        started = time.perf_counter()
        app.control.add_consumer(
            "bench_noop",
            exchange=TASK_EXCHANGE,
            exchange_type="topic",
            routing_key="bench_noop",
            options={"durable": True, "queue_arguments": arguments},
            destination=[worker],
            reply=True,
            timeout=10,
        )
        deadline = started + max(60.0, count / 50)
        while True:
            left = ready()
            now = time.perf_counter()
            points.append((now - started, left))
            if left == 0 or now > deadline:
                break
            time.sleep(0.02)
        drained = points[-1][0]
        app.control.cancel_consumer("bench_noop", destination=[worker], reply=True, timeout=10)
        time.sleep(0.5)
        channel.queue_delete(queue="bench_noop")
    slope = None
    inside = [(t, n) for t, n in points if 0.1 * queued <= n <= 0.9 * queued]
    if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
        slope = (inside[0][1] - inside[-1][1]) / (inside[-1][0] - inside[0][0])
    return {
        "tasks": count,
        "queued_before_start": queued,
        "publish_per_s": round(count / publish_seconds, 1),
        "drain_seconds": round(drained, 3),
        "tasks_per_s": round(queued / drained, 1) if drained > 0 and points[-1][1] == 0 else None,
        "tasks_per_s_10_to_90": _round(slope, 1),
        "note": "measured from the broker's ready count; the last few prefetched tasks finish within milliseconds",
    }


# --- 2. steady ------------------------------------------------------------------------------------------


def run_steady(b: Bench) -> dict[str, Any]:
    rate, seconds = b.sizes.steady_rate, b.sizes.steady_seconds
    n = b.fit_creation(int(rate * seconds), b.sizes.steady_creation_budget_seconds, "steady")
    seconds = n / rate
    b.gateway_reset()
    start_ts = b.plan_due_instant(n)
    dues = [utc(start_ts + i / rate) for i in range(n)]
    logger.info("steady: %d payments at %.0f/s for %.0fs from %s", n, rate, seconds, dues[0].isoformat())
    created = b.create_payments(
        label="steady", count=n, due=dues, stop_at=b.creation_deadline(start_ts), spacing=1 / rate
    )
    ids = created.created
    if created.stopped_early or created.rejected:
        b.notes.append(f"steady: creation fell behind or was rejected: {created.as_dict()}")
    b.sleep_until(start_ts)
    window = Window(b, "steady")
    # The real worker processes, sampled from outside while they execute the steady load.
    profile = pyspy.Recording(b.pid_of("worker"), min(seconds, 30.0), b.stack.run_dir / "pyspy-steady-worker.txt")
    all_terminal, counts, finished = b.wait_terminal(
        ids, timeout=seconds + b.sizes.drain_timeout_seconds, what="steady", due_until=dues[-1]
    )
    window.close(wait_for_stats=True)
    summary = outcome_summary(b, ids, counts)
    rows = summary.pop("_rows")
    buckets: dict[int, list[float]] = {}
    for due, executed, _, _ in rows:
        if executed is not None:
            buckets.setdefault(int(due - start_ts), []).append(executed - due)
    over_time = []
    for second in sorted(buckets):
        values = sorted(buckets[second])
        over_time.append(
            {
                "second": second,
                "count": len(values),
                "p50": round(percentile(values, 50), 4),
                "p99": round(percentile(values, 99), 4),
                "max": round(values[-1], 4),
            }
        )
    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "payments_requested": n,
        "creation": created.as_dict(),
        "starts_at": utc(start_ts).isoformat(),
        **summary,
        "timed_out": not all_terminal,
        "ledger": check_ledger(b, summary, ids[:: max(1, len(ids) // 100)]),
        "window": window.report(summary["succeeded"], cpu_end=min(finished, start_ts + seconds)),
        "lateness_over_time": over_time,
        "worker_profile": profile.finish(),
    }


# --- 4. API --------------------------------------------------------------------------------------------


def run_api(b: Bench) -> dict[str, Any]:
    port, seconds, concurrency = b.stack.web_port, b.sizes.api_seconds, b.sizes.api_concurrency
    tokens = b.tokens
    far = datetime.now(UTC) + timedelta(days=7)
    pool = b.create_payments(label="api-pool", count=max(50, len(tokens) * 4), due=far)
    owned = sorted(pool.by_index.items())  # (creation index, id): its owner is tokens[index % len(tokens)]
    if not owned:
        raise RuntimeError("api: could not create the payments to read")

    def auth(index: int) -> tuple[str, str]:
        return ("Authorization", f"Bearer {tokens[index % len(tokens)]}")

    def noop_get(i: int) -> tuple[str, str, list[tuple[str, str]], bytes]:
        return "GET", "/bench/noop", [auth(i)], b""

    def payment_get(i: int) -> tuple[str, str, list[tuple[str, str]], bytes]:
        index, payment_id = owned[i % len(owned)]
        return "GET", f"/api/v1/payments/{payment_id}", [auth(index)], b""

    def poster(label: str, path: str) -> loadgen.RequestFactory:
        def make(i: int) -> tuple[str, str, list[tuple[str, str]], bytes]:
            headers = [auth(i), ("Idempotency-Key", f"{b.run_id}-{label}-{i}"), ("Content-Type", "application/json")]
            return "POST", path, headers, b.payment_body(far + timedelta(milliseconds=i), i)

        return make

    phases: list[dict[str, Any]] = []

    def run(coroutine_factory: Any, count_for: str) -> dict[str, Any]:
        started = time.time()
        result: loadgen.LoadResult = asyncio.run(coroutine_factory())
        ended = time.time()
        data = result.as_dict()
        cpu = b.sampler.window(started, ended)
        data["cpu"] = cpu
        data["web_cpu_ms_per_request"] = _per(cpu.get("cpu_seconds", {}).get("web", 0.0) * 1000, result.ok, 2)
        data["harness_cpu_ms_per_request"] = _per(cpu.get("cpu_seconds", {}).get("harness", 0.0) * 1000, result.ok, 2)
        data["postgres_cpu_ms_per_request"] = _per(cpu.get("cpu_seconds", {}).get("postgres", 0.0) * 1000, result.ok, 2)
        phases.append(data)
        logger.info(
            "api %s: %.0f req/s, p50 %s ms, p99 %s ms (%s)",
            data["name"],
            data["throughput_rps"],
            data["latency_ms"]["p50"],
            data["latency_ms"]["p99"],
            count_for,
        )
        return data

    host = "127.0.0.1"
    closed = [
        ("noop GET", noop_get, 200),
        ("payment POST", poster("api-post", "/api/v1/payments"), 201),
        ("payment GET", payment_get, 200),
        ("noop POST", poster("api-noop", "/bench/noop"), 200),
    ]
    maxima: dict[str, dict[str, Any]] = {}
    for name, factory, ok in closed:
        maxima[name] = run(
            lambda n=name, f=factory, s=ok: loadgen.closed_loop(
                host, port, name=n, factory=f, concurrency=concurrency, seconds=seconds, ok_status=s
            ),
            f"closed loop, {concurrency} connections",
        )
    # The real gunicorn workers, sampled from outside during one more POST phase: its rate is
    # reported (the sampling's cost shows against the phase above) but judged against nothing.
    profile = pyspy.Recording(b.pid_of("web"), seconds, b.stack.run_dir / "pyspy-api-post-web.txt")
    profiled_post = run(
        lambda: loadgen.closed_loop(
            host,
            port,
            name="payment POST, py-spy sampling",
            factory=poster("api-post-profiled", "/api/v1/payments"),
            concurrency=concurrency,
            seconds=seconds,
            ok_status=201,
        ),
        f"closed loop, {concurrency} connections",
    )
    profiled_post["web_profile"] = profile.finish()
    post_max = maxima["payment POST"]["throughput_rps"]
    # Half the measured maximum first (sustainable by definition), then half the target (perhaps not).
    target_half = TARGET_POST_RPS / 2
    rates = [target_half]
    if post_max and abs(post_max / 2 - target_half) / target_half > 0.1:
        rates.insert(0, round(post_max / 2, 1))
    at_half: list[dict[str, Any]] = []
    for rate in rates:
        b.wait_quiet("web")
        at_half.append(
            run(
                lambda r=rate: loadgen.open_loop(
                    host,
                    port,
                    name=f"payment POST at {r:g}/s",
                    factory=poster(f"api-open-{r:g}", "/api/v1/payments"),
                    rate=r,
                    seconds=seconds,
                    ok_status=201,
                ),
                "open loop",
            )
        )
        at_half[-1]["rate_basis"] = "half the target" if rate == target_half else "half the measured maximum"
    b.wait_quiet("web")  # an overloaded phase leaves abandoned requests in gunicorn's queue
    noop_rps = maxima["noop GET"]["throughput_rps"]
    return {
        "seconds_per_phase": seconds,
        "concurrency": concurrency,
        "max_throughput": maxima,
        "post_at_half_load": at_half,
        "post_rps": post_max,
        "post_web_profile": profiled_post["web_profile"],
        "post_ratio_to_noop": _per(post_max, int(noop_rps) if noop_rps else 0),
        "get_ratio_to_noop": _per(maxima["payment GET"]["throughput_rps"], int(noop_rps) if noop_rps else 0),
        "phases": phases,
    }


# --- 5. profile: queries and CPU per payment, in this process ----------------------------------------------


@contextmanager
def count_queries() -> Iterator[list[dict[str, Any]]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    captured: list[dict[str, Any]] = []
    with CaptureQueriesContext(connection) as context:
        yield captured
    captured.extend(context.captured_queries)


@contextmanager
def timed_steps() -> Iterator[dict[str, dict[str, float]]]:
    """Wall and process CPU time of the execution path's steps, by wrapping them in ``payments.engine.execution``.

    The steps are looked up by name (the engine may change): a step that is not there is simply not timed.
    Process CPU includes every thread, so the gateway step holds the HTTP client's pool threads too.
    """
    from payments.engine import execution

    totals: dict[str, dict[str, float]] = {}

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                entry = totals.setdefault(name, {"wall": 0.0, "cpu": 0.0})
                entry["wall"] += time.perf_counter() - wall
                entry["cpu"] += time.process_time() - cpu

        return wrapper

    class TimedGateway:
        def __init__(self, gateway: Any) -> None:
            self._gateway = gateway

        def __getattr__(self, name: str) -> Any:
            value = getattr(self._gateway, name)
            return timed(f"gateway.{name}", value) if name.startswith("charge") else value

    originals = {n: getattr(execution, n) for n in ("begin_submissions", "record_outcomes") if hasattr(execution, n)}
    gateway_factory = getattr(execution, "_gateway", None)
    for name, function in originals.items():
        setattr(execution, name, timed(name, function))
    if gateway_factory is not None:
        execution._gateway = lambda: TimedGateway(gateway_factory())  # type: ignore[assignment,return-value]
    try:
        yield totals
    finally:
        for name, function in originals.items():
            setattr(execution, name, function)
        if gateway_factory is not None:
            execution._gateway = gateway_factory  # type: ignore[assignment]


def run_profile(b: Bench) -> dict[str, Any]:
    """Queries per request / payment / tick, and where the execution path's CPU goes (beat stopped)."""
    from django.conf import settings
    from django.test import Client

    from payments.engine.execution import payments_execute, payments_sweep
    from payments.gateways import reset_gateway_cache
    from payments.state_machine import claim_due_payments

    result: dict[str, Any] = {}
    client = Client()
    token = b.tokens[0]
    far = datetime.now(UTC) + timedelta(days=8)
    samples = 20

    def post(i: int) -> Any:
        return client.post(
            "/api/v1/payments",
            data=b.payment_body(far + timedelta(milliseconds=i), i),
            content_type="application/json",
            headers={"authorization": f"Bearer {token}", "idempotency-key": f"{b.run_id}-profile-{i}"},
        )

    def noop(i: int) -> Any:
        return client.get("/bench/noop", headers={"authorization": f"Bearer {token}"})

    def get(i: int) -> Any:
        return client.get(f"/api/v1/payments/{created[i % len(created)]}", headers={"authorization": f"Bearer {token}"})

    created: list[str] = []
    calls: list[tuple[str, Callable[[int], Any]]] = [("payment POST", post), ("payment GET", get), ("noop GET", noop)]
    for name, call in calls:
        with count_queries() as queries:
            responses = [call(i) for i in range(samples)]
        statuses = [response.status_code for response in responses]
        if name == "payment POST":
            created = [response.json()["id"] for response in responses if response.status_code == 201]
        result[f"queries_per_{name.replace(' ', '_')}"] = _per(len(queries), samples, 2)
        result[f"statuses_{name.replace(' ', '_')}"] = sorted(set(statuses))
        if name == "payment POST":
            result["example_post_queries"] = [q["sql"][:160] for q in queries[: len(queries) // samples]]

    # Where a POST's CPU goes: the whole middleware and DRF stack through the test client, sampled.
    posts = max(50, b.sizes.profile_payments // 2)
    cpu0 = time.process_time()
    for i in range(samples, samples + posts):
        post(i)
    result["post_cpu_ms_in_process"] = _per((time.process_time() - cpu0) * 1000, posts, 3)
    with cpu_profile() as post_profile:
        for i in range(samples + posts, samples + 2 * posts):
            post(i)
    result["post_cpu_profile"] = post_profile.report()

    # The execution path, in this process: claimed (without publishing), then executed in batches.
    template = template_payment(b)
    count = b.sizes.profile_payments
    due_ids = insert_payments(b, template, count, due_sql=DUE_NOW_SQL, id_seq=b.ids.take(count), returning=True)
    claims = claim_due_payments(
        lookahead=timedelta(seconds=1), lease=timedelta(seconds=120), limit=count, actor="bench"
    )
    claimed = [str(c.payment_id) for c in claims]
    batch = settings.EXECUTION_BATCH_SIZE
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with count_queries() as queries, timed_steps() as steps:
        for start in range(0, len(claimed), batch):
            payments_execute(claimed[start : start + batch])
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    counts = b.status_counts(due_ids)
    # A second, profiled pass on as many payments (the timings above are the unprofiled ones).
    more = insert_payments(b, template, count, due_sql=DUE_NOW_SQL, id_seq=b.ids.take(count), returning=True)
    more_claims = claim_due_payments(
        lookahead=timedelta(seconds=1), lease=timedelta(seconds=120), limit=count, actor="bench"
    )
    with cpu_profile() as execution_profile:
        for start in range(0, len(more_claims), batch):
            payments_execute([str(c.payment_id) for c in more_claims[start : start + batch]])
        # Let the gateway adapter's pool threads finish inside the profile (see bench.profiler).
        reset_gateway_cache()
    b.wait_terminal(more, timeout=60, what="profiled payments")
    with count_queries() as tick_queries:
        payments_sweep()
    result.update(
        {
            "execution_payments": len(claimed),
            "execution_batch_size": batch,
            "execution_statuses": counts,
            "queries_per_payment_executed": _per(len(queries), len(claimed), 2),
            "queries_per_execution_batch": _per(len(queries), math.ceil(len(claimed) / batch), 2),
            "execution_cpu_ms_per_payment": _per(cpu * 1000, len(claimed), 3),
            "execution_wall_ms_per_payment": _per(wall * 1000, len(claimed), 3),
            "single_process_executions_per_s": round(len(claimed) / wall, 1) if wall else None,
            "execution_queries": [
                q["sql"][:160] for q in queries[: max(1, len(queries) // max(1, len(claimed) // batch))]
            ],
            "queries_per_idle_sweep_tick": len(tick_queries),
            "cpu_profile": execution_profile.report(),
            "steps_ms_per_payment": {
                name: {k: _per(v * 1000, len(claimed), 3) for k, v in values.items()} for name, values in steps.items()
            },
        }
    )
    return result


# --- 3. sweep cost vs backlog ------------------------------------------------------------------------------


def explain_claim(b: Bench) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the sweep's claim query, in a transaction that is rolled back."""
    from django.conf import settings
    from django.db import connection, transaction

    from payments import state_machine

    sql = getattr(state_machine, "QUERIES", {}).get("claim_due")
    params: dict[str, Any] = {
        "lookahead": settings.SWEEP_LOOKAHEAD,
        "limit": settings.SWEEP_BATCH_SIZE,
        "lease": settings.DISPATCH_LEASE,
        "actor": "bench:explain",
    }
    if not isinstance(sql, str):
        sql = (
            "SELECT id FROM payments_payment WHERE status = 'scheduled'"
            " AND scheduled_for <= statement_timestamp() + %(lookahead)s"
            " ORDER BY scheduled_for LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
        )
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            plan = [str(row[0]) for row in cursor.fetchall()]
        transaction.set_rollback(True)
    return plan


def _tick(repeat: int) -> list[float]:
    from payments.engine.execution import payments_sweep

    durations = []
    for _ in range(repeat):
        started = time.perf_counter()
        payments_sweep()
        durations.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)
    return durations


def run_sweep(b: Bench) -> dict[str, Any]:
    """Tick duration with nothing due and with ``sweep_due`` due, as the backlog of future payments grows."""
    from payments.engine.execution import payments_sweep

    # Backlog rows belong to a user of their own, who never calls the API (per-user limits stay untouched);
    # due rows are copies of a regular user's payment.
    backlog_template = template_payment(b, owner_id=b.backlog_user_id)
    template = template_payment(b)
    levels: list[dict[str, Any]] = []
    present = 0
    for level in b.sizes.sweep_backlogs:
        if b.remaining() < 60:
            b.notes.append(f"sweep: skipped backlog {level:,} (run deadline)")
            break
        inserted_seconds = 0.0
        if level > present:
            started = time.perf_counter()
            todo = level - present
            while todo > 0:
                chunk = min(todo, 100_000)
                insert_payments(
                    b, backlog_template, chunk, due_sql=FUTURE_SQL, id_seq=b.ids.take(chunk), returning=False
                )
                todo -= chunk
                logger.info("sweep: backlog %d / %d", level - todo, level)
            inserted_seconds = time.perf_counter() - started
            present = level
        # The same state at every level: statistics fresh, visibility map set (autovacuum would get there).
        b.execute("VACUUM ANALYZE payments_payment")
        future = b.query("SELECT count(*) FROM payments_payment WHERE status = 'scheduled'")[0][0]
        _tick(3)  # warm the caches
        idle = _tick(b.sizes.sweep_idle_ticks)
        idle_plan = explain_claim(b)
        with count_queries() as idle_queries:
            payments_sweep()
        due_ticks: list[float] = []
        dispatched: list[int] = []
        due_plan: list[str] = []
        executed_ok = True
        for repeat in range(b.sizes.sweep_due_ticks):
            due_ids = insert_payments(
                b,
                template,
                b.sizes.sweep_due,
                due_sql=DUE_NOW_SQL,
                id_seq=b.ids.take(b.sizes.sweep_due),
                returning=True,
            )
            if repeat == 0:
                due_plan = explain_claim(b)
            started = time.perf_counter()
            report = payments_sweep()
            due_ticks.append((time.perf_counter() - started) * 1000)
            dispatched.append(report.dispatched)
            done, _, _ = b.wait_terminal(due_ids, timeout=120, what="sweep due payments")
            executed_ok = executed_ok and done
        levels.append(
            {
                "backlog": level,
                "scheduled_rows": int(future),
                "insert_seconds": round(inserted_seconds, 1),
                "idle_tick_ms": summarize(idle),
                "due_tick_ms": summarize(due_ticks),
                "due_per_tick": b.sizes.sweep_due,
                "dispatched_per_due_tick": dispatched,
                "due_payments_executed": executed_ok,
                "queries_per_idle_tick": len(idle_queries),
                "slowest_idle_tick_queries": [
                    {"ms": round(float(q["time"]) * 1000, 3), "sql": " ".join(q["sql"].split())[:160]}
                    for q in sorted(idle_queries, key=lambda q: -float(q["time"]))[:5]
                ],
                "explain_idle": idle_plan,
                "explain_due": due_plan,
                "uses_partial_index": any("payment_due_sweep_idx" in line for line in idle_plan),
            }
        )
        logger.info(
            "sweep: backlog %d: idle tick p50 %.2f ms, tick with %d due p50 %.1f ms",
            level,
            levels[-1]["idle_tick_ms"]["p50"],
            b.sizes.sweep_due,
            levels[-1]["due_tick_ms"]["p50"] or 0,
        )
    ratio = due_ratio = None
    if len(levels) >= 2 and levels[0]["idle_tick_ms"]["p50"]:
        ratio = levels[-1]["idle_tick_ms"]["p50"] / levels[0]["idle_tick_ms"]["p50"]
        if levels[0]["due_tick_ms"]["p50"]:
            due_ratio = levels[-1]["due_tick_ms"]["p50"] / levels[0]["due_tick_ms"]["p50"]
    return {
        "levels": levels,
        "idle_ratio_largest_to_empty": _round(ratio),
        "due_ratio_largest_to_empty": _round(due_ratio),
        "largest_backlog": levels[-1]["backlog"] if levels else None,
        "method": "payments_sweep() called in the harness process with beat stopped; p50 of the ticks",
    }
