"""The benchmark harness in --quick mode: it runs end to end and writes well-formed results.

Never a timed test: it checks the shape of the figures (all workloads there,
numbers that are numbers, percentiles in order, counts that add up, nothing
executed early, every payment terminal), never their values. The harness runs
as a subprocess on the servers of ``DATABASE_URL`` and ``CELERY_BROKER_URL``
with a database and a vhost of its own, which it drops at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from numbers import Real
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from bench import pyspy

pytestmark = pytest.mark.processes

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ["burst", "steady", "api", "resources", "sweep"]


def is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def is_positive(value: Any) -> bool:
    return is_number(value) and value > 0


def assert_summary(summary: dict[str, Any], what: str) -> None:
    """count/min/p50/p99/max of a non-empty sample: numbers, in order."""
    assert summary["count"] > 0, what
    for key in ("min", "mean", "p50", "p90", "p99", "max"):
        assert is_number(summary[key]), (what, key, summary)
    assert summary["min"] <= summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"], (what, summary)


def assert_execution(result: dict[str, Any], what: str) -> None:
    """Every payment created was executed once, none early, all terminal, and the ledger agrees."""
    assert result["payments"] > 0, what
    assert result["payments"] == result["creation"]["created"], what
    assert sum(result["statuses"].values()) == result["payments"], (what, result["statuses"])
    assert result["terminal"] + result["non_terminal"] == result["payments"], what
    assert result["all_terminal"] is True, (what, result["statuses"])
    assert result["non_terminal"] == 0, what
    assert result["timed_out"] is False, what
    assert result["executed_early"] == 0, what
    assert result["submitted_early"] == 0, what
    assert result["succeeded"] == result["statuses"].get("succeeded", 0), what
    assert result["lateness_s"]["count"] == result["succeeded"], what
    assert_summary(result["lateness_s"], f"{what} lateness")
    assert_summary(result["submit_lateness_s"], f"{what} submission lateness")
    assert result["ledger"]["charges"] == result["succeeded"], (what, result["ledger"])
    assert result["ledger"]["sampled_charged_twice"] == 0, what


def assert_shares_are_shares(profile: dict[str, Any], what: str) -> None:
    """Counts that add up, and each share its count's rounded fraction, whatever the split of samples.

    Rounded shares are not compared with 1: eight shares rounded to three decimals can sum to
    1.004, and one sample in thousands rounds to 0.0 (the bench/pyspy.py summary once failed
    this way by chance).
    """
    total = profile["samples"]
    for key in ("by_package", "by_function", "ours_inclusive"):
        for entry in profile[key]:
            assert 0 < entry["samples"] <= total, (what, key, entry)
            assert entry["share"] == round(entry["samples"] / total, pyspy.SHARE_DIGITS), (what, key, entry)
    # self time: each sample is at the top of one stack, so the packages' counts add up to at most the total
    assert sum(entry["samples"] for entry in profile["by_package"]) <= total, what
    assert sum(entry["samples"] for entry in profile["by_function"]) <= total, what


def assert_pyspy(profile: dict[str, Any], what: str, *, busy: bool) -> None:
    """A py-spy profile of the stack's processes: it ran, shares that are shares, the stacks on disk.

    ``busy``: the processes were busy for the whole sampling (the web during a closed loop),
    so samples must have been taken; a worker executing 100 payments may spend only a few
    hundredths of a second in Python, which at 100 Hz can be no sample at all.
    """
    assert "error" not in profile, (what, profile)
    assert profile["samples"] > 0 or not busy, what
    assert_shares_are_shares(profile, what)
    if busy:
        assert profile["by_package"], what
        assert profile["ours_inclusive"], what
    assert Path(profile["collapsed_stacks"]).exists(), what


@pytest.fixture
def servers() -> tuple[str, str]:
    database = os.environ.get("DATABASE_URL", "")
    broker = os.environ.get("CELERY_BROKER_URL", "")
    if not database.startswith(("postgres://", "postgresql://")) or not broker.startswith("amqp://"):
        pytest.skip("the benchmark needs PostgreSQL and RabbitMQ (DATABASE_URL, CELERY_BROKER_URL)")
    return database, broker


def test_the_quick_benchmark_writes_well_formed_results(servers: tuple[str, str], tmp_path: Path) -> None:
    # given a database and a vhost name of this test's own on the test servers
    database_url, broker_url = servers
    name = f"spay_bench_smoke_{os.getpid()}"
    command = [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)]
    command += ["--database-url", database_url, "--db-name", name, "--broker-url", broker_url, "--vhost", name]
    command += ["--redis-url", os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")]

    # when the harness runs in quick mode
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    run = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=280)

    # then it succeeded and wrote the JSON, the plots and the summary
    assert run.returncode == 0, run.stderr[-8000:]
    [result_file] = tmp_path.glob("*.json")
    data = json.loads(result_file.read_text())
    stamp = data["meta"]["stamp"]
    assert result_file.name == f"{stamp}.json"
    summary = (tmp_path / f"{stamp}.md").read_text()
    assert "## Targets" in summary
    for plot in ("burst", "steady", "sweep", "api", "cpu"):
        assert data["plots"][plot] == f"{stamp}-{plot}.png"
        assert (tmp_path / data["plots"][plot]).stat().st_size > 1000
        assert data["plots"][plot] in summary

    # with every workload and no error
    assert data["errors"] == []
    assert data["meta"]["quick"] is True
    assert sorted(data["workloads"]) == sorted(WORKLOADS)

    # burst: executed once each, none early, all terminal, a rate beside its no-op reference
    burst = data["workloads"]["burst"]
    assert_execution(burst, "burst")
    for key in ("drain_seconds", "executions_per_s", "ratio_to_noop"):
        assert is_positive(burst[key]), key
    noop = burst["noop_reference"]
    assert is_positive(noop["tasks_per_s"])
    assert noop["queued_before_start"] == noop["tasks"]
    assert sum(burst["series"]["executions_per_second"]) == burst["succeeded"]
    execution = burst["execution"]
    assert execution["payments"] == burst["succeeded"]
    assert is_number(execution["postgres"]["transactions_per_payment"])

    # steady: the same, and lateness over time whose counts add up
    steady = data["workloads"]["steady"]
    assert_execution(steady, "steady")
    over_time = steady["lateness_over_time"]
    assert sum(point["count"] for point in over_time) == steady["succeeded"]
    for point in over_time:
        assert point["p50"] <= point["p99"] <= point["max"], point
    assert_pyspy(steady["worker_profile"], "steady worker", busy=False)

    # API: every phase answered, percentiles in order, the no-op reference is there
    api = data["workloads"]["api"]
    names = [phase["name"] for phase in api["phases"]]
    assert {"noop GET", "payment POST", "payment GET", "noop POST"} <= set(names)
    for phase in api["phases"]:
        assert phase["ok"] > 0, phase["name"]
        assert phase["ok"] + phase["errors"] <= phase["requests"], phase["name"]
        assert sum(phase["statuses"].values()) == phase["requests"], phase["name"]
        assert is_positive(phase["throughput_rps"]), phase["name"]
        assert_summary(phase["latency_ms"], phase["name"])
    assert is_number(api["post_ratio_to_noop"])
    assert_pyspy(api["post_web_profile"], "API web", busy=True)

    # resources: memory of web and worker, transactions and queries per payment
    resources = data["workloads"]["resources"]
    for component in ("web", "worker"):
        memory = resources["memory"][component]
        assert 0 < memory["max_process_peak_rss_mb"] <= memory["peak_total_rss_mb"], component
    per_payment = resources["per_payment"]
    assert is_number(per_payment["postgres_transactions"])
    if resources["rabbitmq_source"] == "management API":
        assert is_number(per_payment["rabbitmq_published"])
    profile = resources["profile"]
    for key in ("queries_per_payment_POST", "queries_per_payment_executed", "execution_cpu_ms_per_payment"):
        assert is_positive(profile[key]), key
    assert profile["execution_statuses"] == {"succeeded": profile["execution_payments"]}

    # sweep: both backlogs, tick durations in order, a plan saved for each
    sweep = data["workloads"]["sweep"]
    assert [level["backlog"] for level in sweep["levels"]] == [0, 2000]
    for level in sweep["levels"]:
        assert level["scheduled_rows"] >= level["backlog"]
        assert_summary(level["idle_tick_ms"], "idle tick")
        assert_summary(level["due_tick_ms"], "due tick")
        assert level["dispatched_per_due_tick"] == [level["due_per_tick"]]
        assert level["due_payments_executed"] is True
        assert level["explain_idle"]
        assert level["explain_due"]
    assert is_number(sweep["idle_ratio_largest_to_empty"])

    # targets: each compared, whatever the verdict
    assert {t["status"] for t in data["targets"]} <= {"met", "MISSED", "n/a"}
    assert len(data["targets"]) >= 7

    # and the run's database is gone
    server = urlunsplit(urlsplit(database_url)._replace(path="/postgres"))
    with psycopg.connect(server, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone() == (0,)
