"""The run's JSON, the comparison with issue 6's targets, and the Markdown summary."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .workloads import (
    TARGET_BURST_RATE,
    TARGET_BURST_RATE_SLOW_GATEWAY,
    TARGET_LATENESS_P99_S,
    TARGET_NOOP_RATIO,
    TARGET_POST_P99_MS,
    TARGET_POST_RPS,
    TARGET_SWEEP_RATIO,
)

# Components whose CPU is ours. "postgres_server" (every PostgreSQL process, exited backends included)
# also holds other databases' work on a shared server, so it is shown beside them, not among them.
OUR_COMPONENTS = ("web", "worker", "beat", "gateway", "harness", "postgres", "rabbitmq")
LABELS = {
    "web": "gunicorn (web)",
    "worker": "Celery worker",
    "beat": "Celery beat",
    "gateway": "sandbox gateway",
    "harness": "load generator (harness)",
    "postgres": "PostgreSQL backends of the run's database",
    "rabbitmq": "RabbitMQ",
    "postgres_server": "PostgreSQL server, all databases",
    "others": "other processes on the machine",
}


def public(data: Any) -> Any:
    """Drop private keys (``_...``, kept for the plots) and non-finite numbers."""
    if isinstance(data, dict):
        return {k: public(v) for k, v in data.items() if not str(k).startswith("_")}
    if isinstance(data, list):
        return [public(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(public(results), indent=2, sort_keys=False, default=str) + "\n")


# --- what bounds a figure ---------------------------------------------------------------------------------


def cpu_breakdown(cpu: dict[str, Any]) -> dict[str, float]:
    """Cores per component, plus "others" (the rest of the machine's busy time)."""
    cores = {k: float(v) for k, v in (cpu.get("cores") or {}).items() if k in OUR_COMPONENTS}
    busy = cpu.get("system_busy_cores")
    if busy is not None:
        cores["others"] = max(0.0, float(busy) - sum(cores.values()))
    return dict(sorted(cores.items(), key=lambda item: -item[1]))


def bounding(cpu: dict[str, Any], *, exclude: tuple[str, ...] = ()) -> str:
    """A sentence naming what limited a phase, from CPU per component."""
    cores = cpu_breakdown(cpu)
    busy, total = cpu.get("system_busy_cores"), cpu.get("cores_total")
    if not cores or busy is None or not total:
        return "no CPU samples for this phase"
    ranked = [(k, v) for k, v in cores.items() if k not in exclude and v >= 0.02]
    top = ", ".join(f"{LABELS.get(k, k)} {v:.2f}" for k, v in ranked[:4])
    share = busy / total
    if share >= 0.85:
        first = ranked[0][0] if ranked else "?"
        return (
            f"CPU-bound: the machine's {total:.0f} cores were {share:.0%} busy;"
            f" {LABELS.get(first, first)} used the most (cores: {top})"
        )
    return f"not CPU-bound ({share:.0%} of {total:.0f} cores busy): latency/concurrency-bound (cores: {top})"


def _status(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "MISSED")


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    workloads = results.get("workloads", {})
    latency_ms = results["meta"]["stack"]["gateway_latency_ms"]
    targets: list[dict[str, Any]] = []

    def add(name: str, target: str, measured: Any, met: bool | None, shortfall: str, bound: str) -> None:
        targets.append(
            {
                "name": name,
                "target": target,
                "measured": measured,
                "met": met,
                "status": _status(met),
                "shortfall": shortfall if met is False else "",
                # What limits the figure, met or not (the issue asks for it where a target is missed).
                "bounded_by": bound,
            }
        )

    burst = workloads.get("burst")
    profile = (workloads.get("resources") or {}).get("profile") or {}
    if burst:
        goal = TARGET_BURST_RATE_SLOW_GATEWAY if latency_ms >= 50 else TARGET_BURST_RATE
        rate = burst["executions_per_s"]
        cpu = burst.get("drain_cpu") or burst["execution"]["cpu"]
        per = burst["execution"]["cpu_ms_per_payment"]
        evidence = bounding(cpu, exclude=("harness",))
        evidence += (
            f"; CPU per payment: worker {per.get('worker')} ms, PostgreSQL {per.get('postgres')} ms,"
            f" RabbitMQ {per.get('rabbitmq')} ms, gateway {per.get('gateway')} ms;"
            f" {burst['execution']['postgres']['transactions_per_payment']} transactions"
        )
        if profile.get("queries_per_payment_executed") is not None:
            evidence += f" and {profile['queries_per_payment_executed']} queries per payment executed"
        add(
            f"burst of {burst['payments']:,} drains (gateway latency {latency_ms} ms)",
            f">= {goal:,.0f} payments/s",
            rate,
            rate >= goal,
            f"{rate / goal:.0%} of the target ({goal - rate:,.0f}/s short)",
            evidence,
        )
        ratio = burst.get("ratio_to_noop")
        noop_rate = burst["noop_reference"].get("tasks_per_s")
        add(
            "burst rate relative to no-op Celery tasks on the same workers",
            f">= {TARGET_NOOP_RATIO} x no-op rate",
            ratio,
            None if ratio is None else ratio >= TARGET_NOOP_RATIO,
            f"{rate:,.0f}/s vs {noop_rate}/s no-op tasks",
            evidence,
        )
        add(
            "burst: nothing executed early",
            "0 early",
            burst["executed_early"] + burst["submitted_early"],
            burst["executed_early"] + burst["submitted_early"] == 0,
            "payments executed before their due instant",
            "",
        )
    steady = workloads.get("steady")
    if steady:
        p99 = steady["lateness_s"]["p99"]
        add(
            f"steady {steady['rate_per_s']:g}/s for {steady['seconds']:g}s: lateness p99",
            f"<= {TARGET_LATENESS_P99_S} s",
            p99,
            None if p99 is None else p99 <= TARGET_LATENESS_P99_S,
            f"p99 {p99} s",
            bounding(steady["window"]["cpu"], exclude=("harness",)),
        )
        add(
            "steady: nothing executed early",
            "0 early",
            steady["executed_early"] + steady["submitted_early"],
            steady["executed_early"] + steady["submitted_early"] == 0,
            "payments executed before their due instant",
            "",
        )
    sweep = workloads.get("sweep")
    if sweep and sweep.get("idle_ratio_largest_to_empty") is not None:
        ratio = sweep["idle_ratio_largest_to_empty"]
        largest = sweep["largest_backlog"]
        add(
            f"idle sweep tick with {largest:,} future payments vs none",
            f"<= {TARGET_SWEEP_RATIO} x",
            ratio,
            ratio <= TARGET_SWEEP_RATIO,
            f"{ratio:.2f} x",
            "the sweep's queries (see the saved EXPLAIN (ANALYZE, BUFFERS) and the slowest queries of a tick)",
        )
    api = workloads.get("api")
    if api:
        post = api["max_throughput"]["payment POST"]
        noop = api["max_throughput"]["noop GET"]
        api_evidence = (
            bounding(post["cpu"])
            + f"; web CPU per POST {post['web_cpu_ms_per_request']} ms vs {noop['web_cpu_ms_per_request']} ms per"
            f" no-op request; load generator {post['harness_cpu_ms_per_request']} ms per request"
        )
        if profile.get("queries_per_payment_POST") is not None:
            api_evidence += f"; {profile['queries_per_payment_POST']} queries per POST"
        add(
            "POST /api/v1/payments throughput",
            f">= {TARGET_POST_RPS:.0f} req/s",
            post["throughput_rps"],
            post["throughput_rps"] >= TARGET_POST_RPS,
            f"{post['throughput_rps'] / TARGET_POST_RPS:.0%} of the target;"
            f" no-op DRF endpoint {noop['throughput_rps']} req/s",
            api_evidence,
        )
        half = next(p for p in api["post_at_half_load"] if p["rate_basis"] == "half the target")
        p99 = half["latency_ms"]["p99"]
        add(
            f"POST p99 latency at {half['offered_rps']} req/s (half the target load)",
            f"<= {TARGET_POST_P99_MS:.0f} ms",
            p99,
            None if p99 is None else p99 <= TARGET_POST_P99_MS,
            f"p99 {p99} ms (achieved {half['throughput_rps']} req/s)",
            api_evidence,
        )
    return targets


# --- Markdown --------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return lines


def _cpu_line(cpu: dict[str, Any]) -> str:
    cores = cpu_breakdown(cpu)
    if not cores:
        return "CPU: no samples."
    parts = ", ".join(f"{LABELS.get(k, k)} {v:.2f}" for k, v in cores.items() if v >= 0.01)
    server = (cpu.get("cores") or {}).get("postgres_server")
    extra = f" ({LABELS['postgres_server']}: {server:.2f})" if server is not None else ""
    return f"CPU (cores, of {_fmt(cpu.get('cores_total'))}): {parts}{extra}."


def _pyspy_lines(profile: dict[str, Any] | None, what: str) -> list[str]:
    """A paragraph on a py-spy profile of the stack's processes (see bench/pyspy.py), or why there is none."""
    if not profile:
        return []
    if profile.get("error"):
        return ["", f"No py-spy profile of {what}: {profile['error']}."]

    def listed(key: str, count: int) -> str:
        return ", ".join(f"`{p['name']}` {p['share']:.0%}" for p in profile.get(key, [])[:count])

    return [
        "",
        f"Where the CPU goes, py-spy on {what} ({profile['samples']:,} samples; {profile['method']}): "
        f"self time by package {listed('by_package', 8)}; by function {listed('by_function', 6)}; "
        f"this project's functions, inclusive: {listed('ours_inclusive', 8)}. "
        f"Collapsed stacks (flamegraph.pl / speedscope input): `{profile.get('collapsed_stacks')}`.",
    ]


def markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    meta = results["meta"]
    w = results.get("workloads", {})
    out = [
        f"# Benchmark {meta['stamp']} ({'quick' if meta['quick'] else 'full'} run)",
        "",
        f"Machine: {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}), "
        f"{meta['machine']['memory_gb']} GB; PostgreSQL {meta['versions'].get('postgresql')}, "
        f"RabbitMQ {meta['versions'].get('rabbitmq')}, Python {meta['versions']['python']}. "
        f"Commit {meta['git']['commit'][:12]}{' (with uncommitted changes)' if meta['git']['dirty'] else ''}.",
        "",
        f"Stack: gunicorn {meta['stack']['web_workers']} workers x {meta['stack']['web_threads']} threads; "
        f"Celery worker {meta['stack']['worker_pool']} x {meta['stack']['worker_concurrency']}; beat "
        f"(DatabaseScheduler); sandbox gateway latency {meta['stack']['gateway_latency_ms']} ms. "
        f"Engine settings: {', '.join(f'{k}={v}' for k, v in meta['settings'].items())}.",
        "",
        "Everything runs on this one machine, the load generator included; figures that depend on its "
        "speed are shown next to a reference measured in the same run (no-op Celery task, no-op DRF endpoint).",
        "",
        "## Targets (issue 6)",
        "",
    ]
    targets = results.get("targets", [])
    out += _table(
        ["target", "goal", "measured", "status", "short by", "what limits it"],
        [[t["name"], t["target"], t["measured"], t["status"], t["shortfall"], t["bounded_by"]] for t in targets],
    )
    if meta["quick"]:
        out += ["", "_Quick run: sizes are far below the targets' conditions; the statuses mean nothing._"]

    if "burst" in w:
        r = w["burst"]
        noop = r["noop_reference"]
        out += [
            "",
            "## 1. Burst",
            "",
            f"{r['payments']:,} payments "
            + (
                f"created through the API at {r['creation']['rate_per_s']}/s"
                if meta.get("create_via", "api") == "api"
                else "copied into the table with SQL (`--create-via sql`)"
            )
            + ", all due at "
            f"{r['due_at']}. Drained in {r['drain_seconds']} s: **{_fmt(r['executions_per_s'])} payments/s** "
            f"({_fmt(r['executions_per_s_10_to_90'])}/s between 10 % and 90 % done); first execution "
            f"{r['first_execution_after_due_s']} s after the due instant.",
            "",
            f"Reference: no-op Celery tasks on the same workers: {_fmt(noop.get('tasks_per_s'))}/s "
            f"({noop['tasks']:,} tasks); ratio **{_fmt(r['ratio_to_noop'])}**.",
            "",
        ]
        out += _table(
            ["lateness (executed - due)", "p50", "p99", "max", "early"],
            [
                [
                    "executed_at",
                    r["lateness_s"]["p50"],
                    r["lateness_s"]["p99"],
                    r["lateness_s"]["max"],
                    r["executed_early"],
                ],
                [
                    "submission began",
                    r["submit_lateness_s"]["p50"],
                    r["submit_lateness_s"]["p99"],
                    r["submit_lateness_s"]["max"],
                    r["submitted_early"],
                ],
            ],
        )
        led = r["ledger"]
        out += [
            "",
            f"Statuses: {r['statuses']}; all terminal: {_fmt(r['all_terminal'])}. Gateway ledger: {led['charges']} "
            f"charges for {r['succeeded']} succeeded payments (equal: {_fmt(led['charges_equal_succeeded_payments'])});"
            f" {led['sampled_charged_twice']} of {led['sampled_payments']} sampled payments charged twice.",
            "",
            "While draining: " + _cpu_line(r.get("drain_cpu") or r["execution"]["cpu"]),
            "",
            "Per payment executed (from the end of creation to the end of the drain, sweep included): CPU ms "
            + ", ".join(
                f"{LABELS.get(k, k)} {v}"
                for k, v in r["execution"]["cpu_ms_per_payment"].items()
                if k in (*OUR_COMPONENTS, "postgres_server") and v
            )
            + ".",
        ]
        if "burst" in plots:
            out += ["", f"![burst]({plots['burst']})"]
    if "steady" in w:
        r = w["steady"]
        out += [
            "",
            "## 2. Steady",
            "",
            f"{r['rate_per_s']:g} payments/s due for {r['seconds']:g} s ({r['payments']:,} payments). Lateness "
            f"p50 {r['lateness_s']['p50']} s, p99 **{r['lateness_s']['p99']} s**, max {r['lateness_s']['max']} s; "
            f"executed early: {r['executed_early']}, submitted early: {r['submitted_early']}; all terminal: "
            f"{_fmt(r['all_terminal'])}.",
            "",
            _cpu_line(r["window"]["cpu"]),
        ]
        out += _pyspy_lines(r.get("worker_profile"), "the Celery worker (pool included) while it executed this load")
        if "steady" in plots:
            out += ["", f"![steady]({plots['steady']})"]
    if "sweep" in w:
        r = w["sweep"]
        out += ["", "## 3. Sweep cost vs backlog", "", r["method"] + ".", ""]
        out += _table(
            [
                "future payments added",
                "scheduled rows",
                "idle tick p50 (ms)",
                "idle p99",
                "tick with due p50 (ms)",
                "queries/idle tick",
                "partial index",
            ],
            [
                [
                    lv["backlog"],
                    lv["scheduled_rows"],
                    lv["idle_tick_ms"]["p50"],
                    lv["idle_tick_ms"]["p99"],
                    lv["due_tick_ms"]["p50"],
                    lv["queries_per_idle_tick"],
                    lv["uses_partial_index"],
                ]
                for lv in r["levels"]
            ],
        )
        out += [
            "",
            f"Ratio largest ÷ empty: idle **{_fmt(r['idle_ratio_largest_to_empty'])}**, with "
            f"{r['levels'][0]['due_per_tick'] if r['levels'] else '—'} due {_fmt(r['due_ratio_largest_to_empty'])}.",
        ]
        if r["levels"]:
            largest = r["levels"][-1]
            slow = "; ".join(
                f"{q['ms']} ms `{q['sql'][:90]}`" for q in largest.get("slowest_idle_tick_queries", [])[:3]
            )
            if slow:
                out += ["", f"Slowest queries of an idle tick with {largest['backlog']:,} added: {slow}."]
            out += [
                "",
                f"EXPLAIN (ANALYZE, BUFFERS) of the claim, {largest['backlog']:,} future payments, none due:",
                "",
                "```",
                *largest["explain_idle"],
                "```",
            ]
        if "sweep" in plots:
            out += ["", f"![sweep]({plots['sweep']})"]
    if "api" in w:
        r = w["api"]
        out += [
            "",
            "## 4. API",
            "",
            f"Closed loop, {r['concurrency']} connections, {r['seconds_per_phase']:g} s each;"
            " then open loop (constant arrival rate) for POST.",
            "",
        ]
        rows = []
        for phase in r["phases"]:
            rows.append(
                [
                    phase["name"],
                    phase["mode"],
                    phase["throughput_rps"],
                    phase["latency_ms"]["p50"],
                    phase["latency_ms"]["p99"],
                    phase["errors"],
                    phase["web_cpu_ms_per_request"],
                    phase["harness_cpu_ms_per_request"],
                ]
            )
        out += _table(
            ["phase", "loop", "req/s", "p50 ms", "p99 ms", "errors", "web CPU ms/req", "load generator CPU ms/req"],
            rows,
        )
        out += [
            "",
            f"POST ÷ no-op GET: {_fmt(r['post_ratio_to_noop'])}; GET ÷ no-op GET: {_fmt(r['get_ratio_to_noop'])}.",
        ]
        out += _pyspy_lines(r.get("post_web_profile"), "the gunicorn workers during the POST phase sampled by py-spy")
        if "api" in plots:
            out += ["", f"![api]({plots['api']})"]
    if "resources" in w:
        r = w["resources"]
        out += ["", "## 5. Resources", ""]
        rows = [
            [LABELS.get(name, name), m["max_process_peak_rss_mb"], m["peak_total_rss_mb"], m["peak_total_pss_mb"]]
            for name, m in r["memory"].items()
            if name in ("web", "worker", "beat", "gateway")
        ]
        out += _table(
            ["component", "largest process peak RSS (MB)", "peak total RSS (MB)", "peak total PSS (MB)"], rows
        )
        per = r.get("per_payment", {})
        out += [
            "",
            f"Per payment executed (burst): PostgreSQL transactions {_fmt(per.get('postgres_transactions'))} "
            f"(net of idle ticks {_fmt(per.get('postgres_transactions_net'))}), rows inserted "
            f"{_fmt(per.get('rows_inserted'))}, rows updated {_fmt(per.get('rows_updated'))}; RabbitMQ messages "
            f"published {_fmt(per.get('rabbitmq_published'))}, enqueued {_fmt(per.get('rabbitmq_enqueued'))}."
            + (
                f" Per payment created through the API: {_fmt(per.get('postgres_transactions_per_create'))}"
                " transactions."
                if meta.get("create_via", "api") == "api"
                else ""
            ),
        ]
        prof = r.get("profile") or {}
        if prof:
            out += [
                "",
                f"Queries: {_fmt(prof.get('queries_per_payment_POST'))} per POST, "
                f"{_fmt(prof.get('queries_per_noop_GET'))} per no-op GET, "
                f"{_fmt(prof.get('queries_per_payment_executed'))} per payment executed "
                f"({_fmt(prof.get('queries_per_execution_batch'))} per batch of {prof.get('execution_batch_size')}), "
                f"{_fmt(prof.get('queries_per_idle_sweep_tick'))} per idle sweep tick. In one process the execution "
                f"path costs {_fmt(prof.get('execution_cpu_ms_per_payment'))} ms CPU per payment "
                f"({_fmt(prof.get('single_process_executions_per_s'))} payments/s in a single process).",
            ]
            steps = prof.get("steps_ms_per_payment") or {}
            if steps:
                parts = "; ".join(
                    f"{name} {v.get('wall')} ms wall / {v.get('cpu')} ms CPU" for name, v in steps.items()
                )
                out += [
                    "",
                    f"Execution steps per payment (in one process, batches of "
                    f"{prof.get('execution_batch_size')}): {parts}.",
                ]
            for key, what in (("cpu_profile", "the execution path"), ("post_cpu_profile", "a POST /payments")):
                cpu_profile = prof.get(key) or {}
                if cpu_profile.get("by_package"):
                    packages = ", ".join(f"{p['name']} {p['share']:.0%}" for p in cpu_profile["by_package"][:8])
                    functions = ", ".join(f"`{p['name']}` {p['share']:.0%}" for p in cpu_profile["by_function"][:8])
                    out += [
                        "",
                        f"Where {what}'s CPU goes ({cpu_profile['method']}): by package {packages}; "
                        f"by function {functions}.",
                    ]
        if "cpu" in plots:
            out += ["", f"![cpu]({plots['cpu']})"]
    notes = results.get("notes", []) + [f"error in {e['workload']}: {e['error']}" for e in results.get("errors", [])]
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    out += [
        "",
        f"Raw figures: `{meta['stamp']}.json`. Logs of the run's processes: `{meta['logs']}` (not committed).",
        "",
    ]
    return "\n".join(out)
