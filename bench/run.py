"""``python -m bench`` / ``make bench``: start the stack, run the workloads, write the results.

    python -m bench                        # the full run: 50,000 payments, ~15 minutes
    python -m bench --quick                # tiny sizes (CI smoke test), ~1.5 minutes
    python -m bench --workloads burst,api --payments 5000 --gateway-latency-ms 50

Results: ``<out>/<stamp>.json``, ``<out>/<stamp>-*.png`` and ``<out>/<stamp>.md``
(default ``bench/results``); the processes' logs go to ``<out>/tmp/<stamp>/``
(ignored by git). Every run is bounded in size and time (``--max-minutes``),
and every process it started is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from . import plots, report
from .context import Bench, Sizes, new_run_id
from .stack import PROJECT_ROOT, Stack, StackOptions

logger = logging.getLogger("bench")

# In the order they run. The sweep comes first so that "no future payments" really means none; the
# workloads after it run with its backlog (1,000,000 future payments) in the table, as production would.
# The sweep and the in-process profile ("resources") run with beat stopped; beat is started again after.
WORKLOADS = ("sweep", "resources", "burst", "steady", "api")
BEATLESS = ("sweep", "resources")
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, help="burst size (default 50,000; 200 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for CI: checks the harness, not the speed")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated, from {','.join(WORKLOADS)} (default: all)"
    )
    parser.add_argument("--gateway-latency-ms", type=int, default=0, help="sandbox gateway latency fault (default 0)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results", help="results folder")
    parser.add_argument("--steady-rate", type=float, help="steady workload: payments due per second (default 200)")
    parser.add_argument("--steady-seconds", type=float, help="steady workload: duration (default 60)")
    parser.add_argument("--sweep-backlogs", help="comma-separated future-payment counts (default 0,100000,1000000)")
    parser.add_argument("--api-seconds", type=float, help="API workload: seconds per phase (default 15)")
    parser.add_argument(
        "--create-via",
        choices=("api", "sql"),
        default="api",
        help="burst and steady payments: POSTed through the API (default) or copied into the table from a "
        "payment the API's service created (when the API is too slow on this machine for the full sizes)",
    )
    parser.add_argument("--noop-tasks", type=int, help="no-op Celery tasks for the reference (default 10,000)")
    parser.add_argument(
        "--database-url",
        help="PostgreSQL server (its database name is ignored); default: "
        "DATABASE_URL if it is PostgreSQL, else " + DEFAULT_DATABASE_URL,
    )
    parser.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help=f"Redis database for the throttles' cache, emptied at the start ({DEFAULT_REDIS_URL}); "
        "'none' uses the file cache (production without REDIS_URL)",
    )
    parser.add_argument("--db-name", default="spay_bench", help="the run's database, dropped and created (spay_bench)")
    parser.add_argument(
        "--broker-url",
        help="RabbitMQ server (its vhost is ignored); default: CELERY_BROKER_URL if "
        "it is AMQP, else " + DEFAULT_BROKER_URL,
    )
    parser.add_argument("--vhost", default="spay_bench", help="the run's vhost, deleted and created (spay_bench)")
    parser.add_argument("--web-workers", type=int, default=4, help="gunicorn workers (default 4)")
    parser.add_argument("--web-threads", type=int, default=2, help="gunicorn threads per worker (default 2)")
    parser.add_argument("--worker-concurrency", type=int, default=4, help="Celery worker concurrency (default 4)")
    parser.add_argument("--worker-pool", default="prefork", help="Celery pool (default prefork)")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for every process, e.g. EXECUTION_BATCH_SIZE=100 (repeatable)",
    )
    parser.add_argument("--max-minutes", type=float, default=28.0, help="stop waiting after this long (default 28)")
    parser.add_argument("--keep", action="store_true", help="keep the database and vhost afterwards")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {sorted(unknown)}")
    for item in args.env:
        if "=" not in item:
            parser.error(f"--env needs NAME=VALUE, not {item!r}")
    return args


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.payments is not None:
        sizes.payments = max(1, args.payments)
    if args.steady_rate is not None:
        sizes.steady_rate = args.steady_rate
    if args.steady_seconds is not None:
        sizes.steady_seconds = args.steady_seconds
    if args.sweep_backlogs:
        sizes.sweep_backlogs = tuple(int(x) for x in args.sweep_backlogs.split(","))
    if args.api_seconds is not None:
        sizes.api_seconds = args.api_seconds
    if args.noop_tasks is not None:
        sizes.noop_tasks = args.noop_tasks
    return sizes


def _server_url(explicit: str | None, variable: str, schemes: tuple[str, ...], default: str) -> str:
    if explicit:
        return explicit
    inherited = os.environ.get(variable, "")
    return inherited if inherited.startswith(schemes) else default


def _git() -> dict[str, Any]:
    git = shutil.which("git")

    def run(*args: str) -> str:
        if git is None:
            return ""
        try:
            return subprocess.run(  # noqa: S603 - git, read-only
                [git, *args],
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": run("rev-parse", "HEAD") or "unknown", "dirty": bool(run("status", "--porcelain"))}


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    return {
        "hostname": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
    }


def _versions(b: Bench) -> dict[str, Any]:
    versions: dict[str, Any] = {"python": platform.python_version()}
    try:
        versions["postgresql"] = b.query("SHOW server_version")[0][0]
    except Exception:
        versions["postgresql"] = None
    try:
        import httpx

        overview = httpx.get(f"{b.stack.management_url}/overview", auth=b.stack.management_auth, timeout=5).json()
        versions["rabbitmq"] = overview.get("rabbitmq_version")
    except Exception:
        versions["rabbitmq"] = None
    return versions


def _engine_settings() -> dict[str, Any]:
    from django.conf import settings

    names = (
        "SWEEP_INTERVAL_SECONDS",
        "SWEEP_LOOKAHEAD",
        "SWEEP_BATCH_SIZE",
        "EXECUTION_BATCH_SIZE",
        "BROKER_QUEUE_TYPE",
        "CELERY_WORKER_PREFETCH_MULTIPLIER",
    )
    values: dict[str, Any] = {name: str(getattr(settings, name, None)) for name in names}
    values["CONN_MAX_AGE"] = settings.DATABASES["default"].get("CONN_MAX_AGE")
    return values


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def resources_summary(b: Bench, results: dict[str, Any]) -> dict[str, Any]:
    burst = results["workloads"].get("burst") or {}
    execution = burst.get("execution") or {}
    creation = burst.get("creation") or {}
    pg = execution.get("postgres") or {}
    rabbit = execution.get("rabbitmq") or {}
    return {
        "memory": b.sampler.peak_memory(),
        "per_payment": {
            "postgres_transactions": pg.get("transactions_per_payment"),
            "postgres_transactions_net": pg.get("transactions_per_payment_net_of_idle"),
            "rows_inserted": pg.get("rows_inserted_per_payment"),
            "rows_updated": pg.get("rows_updated_per_payment"),
            "rabbitmq_published": rabbit.get("published_per_payment"),
            "rabbitmq_published_net": rabbit.get("published_per_payment_net_of_idle"),
            "rabbitmq_enqueued": rabbit.get("enqueued_per_payment"),
            "rabbitmq_delivered": rabbit.get("delivered_per_payment"),
            "postgres_transactions_per_create": (creation.get("postgres") or {}).get("transactions_per_payment"),
            "cpu_ms_per_payment_executed": execution.get("cpu_ms_per_payment"),
            "cpu_ms_per_payment_created": creation.get("cpu_ms_per_payment"),
        },
        "idle": results.get("idle"),
        "sampler_errors": b.sampler.errors,
        "rabbitmq_source": "management API" if b.management else "unavailable (management plugin not reachable)",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s bench %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    selected = [w for w in WORKLOADS if w in args.workloads.split(",")]
    sizes = sizes_from(args)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    out_dir: Path = args.out.resolve()
    run_dir = out_dir / "tmp" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    options = StackOptions(
        database_url=_server_url(
            args.database_url, "DATABASE_URL", ("postgres://", "postgresql://"), DEFAULT_DATABASE_URL
        ),
        db_name=args.db_name,
        broker_url=_server_url(args.broker_url, "CELERY_BROKER_URL", ("amqp://", "pyamqp://"), DEFAULT_BROKER_URL),
        vhost=args.vhost,
        web_workers=args.web_workers,
        web_threads=args.web_threads,
        worker_concurrency=args.worker_concurrency,
        worker_pool=args.worker_pool,
        gateway_latency_ms=args.gateway_latency_ms,
        redis_url="" if args.redis_url == "none" else args.redis_url,
        extra_env=dict(item.split("=", 1) for item in args.env),
        keep=args.keep,
    )
    started = time.time()
    results: dict[str, Any] = {
        "meta": {
            "stamp": stamp,
            "quick": args.quick,
            "create_via": args.create_via,
            "workloads": selected,
            "sizes": dict(vars(sizes)),
            "stack": {k: v for k, v in vars(options).items() if k not in ("database_url", "broker_url")},
            "machine": _machine(),
            "git": _git(),
            "logs": str(run_dir),
            "started_at": datetime.now(UTC).isoformat(),
        },
        "workloads": {},
        "phases": [],
        "errors": [],
        "notes": [],
    }
    stack = Stack(options, run_dir)
    bench: Bench | None = None
    interrupted = False
    try:
        with stack.running():
            bench = Bench(stack=stack, sizes=sizes, run_id=new_run_id(), deadline=started + args.max_minutes * 60)
            bench.create_via = args.create_via
            try:
                bench.setup_django()
                bench.management = stack.management_available()
                if not bench.management:
                    results["notes"].append("RabbitMQ management API unreachable: no message counts")
                bench.create_users()
                bench.start_sampling()
                results["meta"]["versions"] = _versions(bench)
                results["meta"]["settings"] = _engine_settings()
                from .workloads import measure_idle, run_api, run_burst, run_profile, run_steady, run_sweep

                results["idle"] = _phase(results, "idle", lambda: measure_idle(bench, 2.0 if args.quick else 5.0))
                jobs: dict[str, Callable[[], dict[str, Any]]] = {
                    "burst": lambda: run_burst(bench),
                    "steady": lambda: run_steady(bench),
                    "api": lambda: run_api(bench),
                    "resources": lambda: {"profile": run_profile(bench)},
                    "sweep": lambda: run_sweep(bench),
                }
                for name in selected:
                    if bench.remaining() < 30:
                        results["notes"].append(f"{name}: skipped, the run's time limit was reached")
                        continue
                    if name in BEATLESS and "beat" not in bench.stopped:
                        bench.stop_process("beat")  # the harness sweeps itself
                    elif name not in BEATLESS and "beat" in bench.stopped:
                        bench.start_beat()
                    try:
                        results["workloads"][name] = _phase(results, name, jobs[name])
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc:
                        logger.exception("workload %s failed", name)
                        results["errors"].append(
                            {"workload": name, "error": repr(exc), "traceback": traceback.format_exc()[-4000:]}
                        )
                if "resources" in selected:
                    results["workloads"].setdefault("resources", {}).update(resources_summary(bench, results))
            finally:
                bench.close()
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("interrupted: processes stopped, writing what was measured")
        results["notes"].append("the run was interrupted")
    except Exception as exc:
        logger.exception("the run failed")
        results["errors"].append({"workload": "stack", "error": repr(exc), "traceback": traceback.format_exc()[-4000:]})
    results["notes"] = results["notes"] + (bench.notes if bench else [])
    results["meta"]["seconds"] = round(time.time() - started, 1)
    results["meta"].setdefault("versions", {"python": platform.python_version()})
    results["meta"].setdefault("settings", {})
    results["targets"] = report.evaluate_targets(results) if results["workloads"] else []
    made = plots.write_plots(results, bench.sampler.samples if bench else [], out_dir, stamp)
    results["plots"] = made
    report.write_json(results, out_dir / f"{stamp}.json")
    (out_dir / f"{stamp}.md").write_text(report.markdown(results, made))
    logger.info("results: %s (%.0fs)", out_dir / f"{stamp}.md", results["meta"]["seconds"])
    for target in results["targets"]:
        logger.info(
            "target %-8s %s: %s (goal %s)", target["status"], target["name"], target["measured"], target["target"]
        )
    if interrupted:
        return 130
    return 1 if results["errors"] else 0


def _phase(results: dict[str, Any], name: str, job: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.time()
    logger.info("--- %s", name)
    try:
        return job()
    finally:
        results["phases"].append({"name": name, "start": started, "end": time.time()})
