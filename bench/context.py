"""What every workload needs: the stack, the clock, the API client, statistics from PostgreSQL and RabbitMQ.

Django is set up in the harness process (``bench.settings``, on the run's own
database) only after the stack has created and migrated that database, so this
module imports no Django code at import time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from . import loadgen
from .procstats import ComponentSource, PidTracker, Sampler
from .rows import SPACED_SQL, IdSequence, insert_payments, template_payment
from .stack import Stack

logger = logging.getLogger("bench")

# Whole seconds the statistics of PostgreSQL (an idle backend flushes its counters after 10 s) and
# of RabbitMQ's management plugin (collected every 5 s) may lag behind what happened.
PG_STATS_LAG_SECONDS = 11.0
RABBIT_STATS_LAG_SECONDS = 6.0
TABLE_COUNTERS = (
    "seq_scan",
    "seq_tup_read",
    "idx_scan",
    "idx_tup_fetch",
    "n_tup_ins",
    "n_tup_upd",
    "n_tup_hot_upd",
    "n_tup_del",
)
PG_COUNTERS = (
    "xact_commit",
    "xact_rollback",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "tup_fetched",
    "tup_returned",
    "blks_hit",
    "blks_read",
)


@dataclass
class Sizes:
    """How big and how long each workload is (``--quick`` shrinks them all)."""

    payments: int = 50_000
    # Many users, as in life: each has at most PAYMENTS_MAX_PENDING_PER_USER (1,000) scheduled payments
    # and 100 requests/s (THROTTLE_USER_RATE).
    users: int = 200
    client_concurrency: int = 24
    margin_seconds: float | None = None  # between the end of creation and the due instant; None: lookahead + 15 s
    drain_timeout_seconds: float = 600.0
    noop_tasks: int = 10_000
    steady_rate: float = 200.0
    steady_seconds: float = 60.0
    sweep_backlogs: tuple[int, ...] = (0, 100_000, 1_000_000)
    sweep_idle_ticks: int = 30
    sweep_due: int = 1_000
    sweep_due_ticks: int = 3
    api_seconds: float = 15.0
    api_concurrency: int = 16
    # Creating payments through the API is CPU-bound on this machine: a burst or steady run whose creation
    # would take longer than this is shrunk to fit (and says so), unless they are created with SQL.
    burst_creation_budget_seconds: float = 540.0
    steady_creation_budget_seconds: float = 180.0
    profile_payments: int = 500
    wait_for_stats: bool = True

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            payments=200,
            users=5,
            client_concurrency=8,
            margin_seconds=3.0,
            drain_timeout_seconds=60.0,
            noop_tasks=500,
            steady_rate=20.0,
            steady_seconds=5.0,
            sweep_backlogs=(0, 2_000),
            sweep_idle_ticks=10,
            sweep_due=100,
            sweep_due_ticks=1,
            api_seconds=3.0,
            api_concurrency=8,
            profile_payments=100,
            wait_for_stats=False,
        )


def _plain_handler() -> logging.Handler:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s bench %(levelname)s %(message)s"))
    return handler


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Bench:
    stack: Stack
    sizes: Sizes
    run_id: str
    deadline: float  # time.time() after which workloads stop waiting
    sampler: Sampler = field(default_factory=Sampler)
    tokens: list[str] = field(default_factory=list)
    user_ids: list[int] = field(default_factory=list)
    backlog_user_id: int | None = None  # owns the sweep's backlog; never calls the API
    management: bool = False
    create_rate: float | None = None  # payments/s through the API, measured by the first workload
    create_via: str = "api"  # or "sql": burst and steady payments copied from a template row
    ids: IdSequence = field(default_factory=IdSequence)
    _maintenance: Any = None
    _sampler_db: Any = None
    _pg_tracker: PidTracker | None = None
    notes: list[str] = field(default_factory=list)
    stopped: set[str] = field(default_factory=set)  # processes stopped on purpose (beat, for the sweep)
    idle_rates: dict[str, float] = field(default_factory=dict)  # xacts/s and messages/s with nothing to do

    # --- set-up ---------------------------------------------------------------------------------

    def setup_django(self) -> None:
        import os

        os.environ.update(self.stack.env)
        import warnings

        import django

        warnings.filterwarnings("ignore", message="No directory at")  # whitenoise, in the test client
        django.setup()
        # Django's LOGGING (JSON lines, INFO) now owns the root logger: keep the harness's own lines
        # readable and silence the engine's per-request logs when it runs in this process.
        logging.getLogger().setLevel(logging.WARNING)
        bench_logger = logging.getLogger("bench")
        bench_logger.handlers = [_plain_handler()]
        bench_logger.setLevel(logging.INFO)
        bench_logger.propagate = False

    def create_users(self) -> None:
        from accounts.models import User
        from accounts.services import token_issue

        self.backlog_user_id = User.objects.create_user(username="bench-backlog").pk
        for index in range(self.sizes.users):
            user = User.objects.create_user(username=f"bench-{index:03d}")
            self.user_ids.append(user.pk)
            self.tokens.append(token_issue(user=user, actor="bench").raw)

    def start_sampling(self) -> None:
        self._maintenance = self.stack.maintenance_connection()
        self._sampler_db = self.stack.maintenance_connection()
        db_name = self.stack.options.db_name

        def backends() -> list[int]:
            rows = self._sampler_db.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (db_name,)
            ).fetchall()
            return [int(row[0]) for row in rows]

        for name in ("web", "worker", "beat", "gateway"):
            self.sampler.add(ComponentSource(name, root=self.stack.processes[name].pid))
        import os

        harness = os.getpid()  # this process only: the stack's processes are its children
        self.sampler.add(ComponentSource("harness", pids=lambda: [harness]))
        # A backend may live for a fraction of a second (a worker that reconnects per task, as Celery's
        # Django fix-up did before the workers kept their connections): they are followed at 20 Hz.
        self._pg_tracker = PidTracker(backends)
        self._pg_tracker.start()
        self.sampler.add(
            ComponentSource("postgres", pids=self._pg_tracker.live, cpu_total=self._pg_tracker.cpu_seconds)
        )
        self.sampler.add(ComponentSource("rabbitmq", comm="beam.smp"))
        self.sampler.start()

    def restart_sampling_of(self, name: str) -> None:
        self.sampler.add(ComponentSource(name, root=self.stack.processes[name].pid))

    def close(self) -> None:
        self.sampler.stop()
        if self._pg_tracker is not None:
            self._pg_tracker.stop()
        for conn in (self._maintenance, self._sampler_db):
            if conn is not None:
                conn.close()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # Django never set up
            logger.debug("closing Django connections", exc_info=True)

    # --- time -------------------------------------------------------------------------------------

    def remaining(self) -> float:
        return self.deadline - time.time()

    def sleep_until(self, instant: float) -> None:
        while (left := instant - time.time()) > 0:
            self.check_processes()
            time.sleep(min(left, 1.0))

    def check_processes(self) -> None:
        dead = [p.name for p in self.stack.processes.values() if p.name not in self.stopped and not p.alive()]
        if dead:
            raise RuntimeError(f"stack process(es) exited: {dead}\n" + self.stack.processes[dead[0]].log_tail())

    def pid_of(self, name: str) -> int:
        """The pid of one of the stack's processes (``web``: gunicorn's master, ``worker``: Celery's)."""
        return self.stack.processes[name].popen.pid

    def stop_process(self, name: str) -> None:
        self.stack.stop(name)
        self.stopped.add(name)
        self.sampler.remove(name)

    def start_beat(self) -> None:
        """Start beat again after a workload that sweeps in the harness itself."""
        self.stack.start_beat()
        self.stopped.discard("beat")
        self.restart_sampling_of("beat")

    def wait_quiet(self, component: str, *, cores: float = 0.15, timeout: float = 30.0) -> None:
        """Until ``component`` used less than ``cores`` over the last two samples (at most ``timeout``)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            samples = self.sampler.samples[-3:]
            if len(samples) == 3:
                elapsed = samples[-1].at - samples[0].at
                used = samples[-1].cpu.get(component, 0.0) - samples[0].cpu.get(component, 0.0)
                if elapsed > 0 and used / elapsed < cores:
                    return
            time.sleep(0.5)

    # --- the API ------------------------------------------------------------------------------------

    def payment_body(self, scheduled_for: datetime, index: int) -> bytes:
        return json.dumps(
            {
                "amount": f"{10 + index % 90}.{index % 100:02d}",
                "currency": "EUR",
                "payment_method": "pm_card_visa",
                "payee": {"name": "Bench Utilities", "account": "DE89370400440532013000"},
                "description": "benchmark",
                "scheduled_for": iso(scheduled_for),
            },
            separators=(",", ":"),
        ).encode()

    def create_payments(
        self,
        *,
        label: str,
        count: int,
        due: list[datetime] | datetime,
        stop_at: float | None = None,
        spacing: float = 0.0,
    ) -> loadgen.CreateResult:
        """POST ``count`` payments through the API (or, with ``create_via="sql"`` for the timed workloads,
        copy a template row ``count`` times: ``due`` then is the first due instant, ``spacing`` seconds apart).
        """
        if self.create_via == "sql" and label in ("burst", "steady"):
            return self._insert_payments(label, count, due[0] if isinstance(due, list) else due, spacing)

        def due_of(index: int) -> datetime:
            return due[index] if isinstance(due, list) else due

        return asyncio.run(
            loadgen.create_payments(
                "127.0.0.1",
                self.stack.web_port,
                count=count,
                body_for=lambda i: self.payment_body(due_of(i), i),
                key_for=lambda i: f"{self.run_id}-{label}-{i}",
                tokens=self.tokens,
                concurrency=self.sizes.client_concurrency,
                stop_at=stop_at,
            )
        )

    def _insert_payments(self, label: str, count: int, first_due: datetime, spacing: float) -> loadgen.CreateResult:
        started = time.perf_counter()
        template = template_payment(self)
        created: list[str] = []
        while len(created) < count:
            chunk = min(count - len(created), 50_000)
            start = first_due + timedelta(seconds=spacing * len(created))
            created += insert_payments(
                self,
                template,
                chunk,
                due_sql=SPACED_SQL,
                id_seq=self.ids.take(chunk),
                returning=True,
                params={"start": start, "step": spacing},
                with_events=True,
            )
        elapsed = time.perf_counter() - started
        by_index = dict(enumerate(created))
        return loadgen.CreateResult(count, created, by_index, elapsed, {"sql": len(created)}, 0, {})

    def fit_creation(self, count: int, budget: float, what: str) -> int:
        """``count``, or fewer if creating them through the API would take longer than ``budget`` seconds."""
        if self.create_via == "sql":
            return count
        rate = self.measure_create_rate()
        fits = max(100, int(rate * budget / 1.15))
        if fits >= count:
            return count
        self.notes.append(
            f"{what}: {fits:,} payments instead of {count:,}: the API created {rate:.0f} payments/s on this machine,"
            f" so {count:,} would have needed {count / rate * 1.15 / 60:.1f} min with a 15 % margin"
            f" (budget {budget / 60:.0f} min); "
            "`--create-via sql` creates them directly in the table"
        )
        logger.warning("%s", self.notes[-1])
        return fits

    def measure_create_rate(self) -> float:
        """Payments/s the API creates at full concurrency (payments due in a week: never executed here)."""
        if self.create_rate is None:
            count = min(1000, max(50, self.sizes.payments // 50))
            result = self.create_payments(label="calibration", count=count, due=datetime.now(UTC) + timedelta(days=7))
            if not result.created:
                raise RuntimeError(f"the API created no payment: {result.as_dict()}")
            self.create_rate = result.rate
            logger.info("calibration: %d payments created at %.0f/s", len(result.created), result.rate)
        return self.create_rate

    def plan_due_instant(self, count: int) -> float:
        """A whole second far enough ahead for ``count`` creations at the measured rate, plus the margin."""
        rate = 5000.0 if self.create_via == "sql" else self.measure_create_rate()
        margin = self.sizes.margin_seconds
        if margin is None:
            margin = self.lookahead_seconds() + 15.0
        return float(math.ceil(time.time() + count / rate * 1.15 + 2 + margin))

    def creation_deadline(self, due_ts: float) -> float:
        """When creation must stop for a set due at ``due_ts``: before the sweep's look-ahead reaches it.

        A payment created later would be claimed as it arrives instead of with the others, and its
        claim and publish would be counted with the creation (with the default margin, 10 s of the
        estimate's slack are left; ``--quick``'s 3 s margin stops 1 s before the due instant).
        """
        margin = self.sizes.margin_seconds
        if margin is None:
            margin = self.lookahead_seconds() + 15.0
        return due_ts - max(1.0, margin - 10.0)

    def lookahead_seconds(self) -> float:
        from django.conf import settings

        return float(settings.SWEEP_LOOKAHEAD.total_seconds())

    # --- the database -----------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> int:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return int(cursor.rowcount)

    def status_counts(self, ids: Sequence[str]) -> dict[str, int]:
        rows = self.query(
            "SELECT status, count(*) FROM payments_payment WHERE id = ANY(%s::uuid[]) GROUP BY status", [list(ids)]
        )
        return {str(status): int(count) for status, count in rows}

    def wait_terminal(
        self, ids: Sequence[str], *, timeout: float, what: str, due_until: datetime | None = None
    ) -> tuple[bool, dict[str, int], float]:
        """Poll until every payment is terminal; returns (all terminal, status counts, time.time() at the end).

        With ``due_until`` (the last due instant of the set, and nothing else in flight), polling counts
        what is still in flight through the engine's partial indexes instead of looking up every id: a
        lookup of 50,000 ids costs PostgreSQL ~150 ms a time, which would be charged to the engine. The
        exact count by id is taken once at the end.
        """
        from payments.statuses import TERMINAL_STATUSES

        deadline = min(time.time() + timeout, self.deadline)
        last_log = 0.0
        while True:
            if due_until is not None:
                pending = self.in_flight(due_until)
                counts = {"in flight or due": pending}
            else:
                counts = self.status_counts(ids)
                pending = sum(n for s, n in counts.items() if s not in TERMINAL_STATUSES)
            now = time.time()
            if pending == 0 or now > deadline:
                final = self.status_counts(ids)
                left = sum(n for s, n in final.items() if s not in TERMINAL_STATUSES)
                if left and now > deadline:
                    logger.warning("%s: %d payments still not terminal after %.0fs: %s", what, left, timeout, final)
                return left == 0, final, now
            if now - last_log > 10:
                logger.info("%s: %d of %d pending %s", what, pending, len(ids), counts)
                last_log = now
            self.check_processes()
            time.sleep(1.0)

    def in_flight(self, due_until: datetime) -> int:
        """Payments being executed (the lease index) plus those scheduled up to ``due_until`` (the sweep's)."""
        rows = self.query(
            "SELECT (SELECT count(*) FROM payments_payment"
            "        WHERE status IN ('dispatched', 'submitting', 'reconciling', 'retry_scheduled'))"
            " + (SELECT count(*) FROM payments_payment WHERE status = 'scheduled' AND scheduled_for <= %s)",
            [due_until],
        )
        return int(rows[0][0])

    def table_snapshot(self) -> dict[str, dict[str, int]]:
        """pg_stat_user_tables of the run's database (read through the harness's own connection)."""
        rows = self.query(
            "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0), coalesce(idx_tup_fetch, 0),"
            " n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables"
        )
        keys = TABLE_COUNTERS
        tables = {str(row[0]): {k: int(v or 0) for k, v in zip(keys, row[1:], strict=True)} for row in rows}
        indexes = self.query("SELECT indexrelname, idx_scan, idx_tup_read, idx_tup_fetch FROM pg_stat_user_indexes")
        for name, scans, read, fetched in indexes:
            tables[f"index {name}"] = {"idx_scan": int(scans or 0), "idx_tup_read": int(read or 0)}
            tables[f"index {name}"]["idx_tup_fetch"] = int(fetched or 0)
        return tables

    def pg_snapshot(self) -> dict[str, int]:
        row = self._maintenance.execute(
            "SELECT " + ", ".join(PG_COUNTERS) + " FROM pg_stat_database WHERE datname = %s",  # noqa: S608
            (self.stack.options.db_name,),
        ).fetchone()
        keys = PG_COUNTERS
        return {k: int(v or 0) for k, v in zip(keys, row or (0,) * len(keys), strict=True)}

    # --- RabbitMQ ----------------------------------------------------------------------------------

    def rabbit_snapshot(self) -> dict[str, Any] | None:
        """Cumulative message counts of the run's vhost and of each of its queues (management API)."""
        if not self.management:
            return None
        vhost = quote(self.stack.options.vhost, safe="")
        auth = self.stack.management_auth
        try:
            overview = httpx.get(f"{self.stack.management_url}/vhosts/{vhost}", auth=auth, timeout=10).json()
            queues = httpx.get(
                f"{self.stack.management_url}/queues/{vhost}",
                params={"columns": "name,messages,message_stats"},
                auth=auth,
                timeout=10,
            ).json()
        except (httpx.HTTPError, ValueError):
            logger.warning("RabbitMQ management API did not answer", exc_info=True)
            return None
        stats = overview.get("message_stats", {})
        keys = ("publish", "deliver_get", "ack", "redeliver", "confirm")
        return {
            "vhost": {k: int(stats.get(k, 0)) for k in keys},
            "queues": {
                q["name"]: {
                    "publish": int(q.get("message_stats", {}).get("publish", 0)),
                    "messages": int(q.get("messages", 0) or 0),
                }
                for q in queues
            },
        }

    @staticmethod
    def rabbit_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
        if before is None or after is None:
            return None
        vhost = {k: after["vhost"][k] - before["vhost"].get(k, 0) for k in after["vhost"]}
        queues = {
            name: q["publish"] - before["queues"].get(name, {}).get("publish", 0) for name, q in after["queues"].items()
        }
        return {"vhost": vhost, "enqueued_per_queue": {k: v for k, v in sorted(queues.items()) if v}}

    # --- the gateway --------------------------------------------------------------------------------

    def gateway_reset(self) -> None:
        httpx.post(f"{self.stack.gateway_url}/v1/admin/reset", params={"confirm": "yes"}, timeout=30).raise_for_status()

    def gateway_stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.stack.gateway_url}/v1/stats", timeout=30)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def gateway_charges(self, payment_id: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.stack.gateway_url}/v1/charges", params={"payment_id": payment_id}, timeout=30)
        response.raise_for_status()
        results: list[dict[str, Any]] = response.json()["results"]
        return results


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]
