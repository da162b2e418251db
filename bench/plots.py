"""PNG plots of a run (matplotlib, headless)."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .procstats import Sample
from .report import LABELS, OUR_COMPONENTS

logger = logging.getLogger("bench")


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def plot_burst(result: dict[str, Any], path: Path) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    per_second = result["series"]["executions_per_second"]
    left.bar(range(len(per_second)), per_second, width=1.0, align="edge", color="tab:blue", label="executed per second")
    noop = result["noop_reference"].get("tasks_per_s")
    if noop:
        left.axhline(noop, color="tab:gray", linestyle=":", label=f"no-op tasks/s ({noop:,.0f})")
    left.axhline(1000, color="tab:red", linestyle="--", label="target 1,000/s")
    left.set_xlabel("seconds after the due instant")
    left.set_ylabel("payments executed per second")
    left.set_title(f"Burst of {result['payments']:,}: {result['executions_per_s']:,.0f}/s overall")
    left.legend(loc="upper right", fontsize=8)
    lateness = sorted(result.get("_lateness", []))
    if lateness:
        fractions = [(i + 1) / len(lateness) for i in range(len(lateness))]
        right.plot(lateness, fractions, color="tab:green")
        right.set_xlabel("lateness: executed_at - scheduled_for (s)")
        right.set_ylabel("fraction of payments")
        right.set_title("Lateness CDF")
        right.grid(alpha=0.3)
    return _save(fig, path)


def plot_steady(result: dict[str, Any], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(10, 4.5))
    points = result["lateness_over_time"]
    xs = [p["second"] for p in points]
    for key, style in (("p50", "-"), ("p99", "--"), ("max", ":")):
        ax.plot(xs, [p[key] for p in points], style, label=key)
    ax.axhline(1.0, color="tab:red", linewidth=0.8, label="target p99 1 s")
    ax.set_xlabel("second of the run (by due instant)")
    ax.set_ylabel("lateness (s)")
    ax.set_title(f"Steady {result['rate_per_s']:g} payments/s: lateness over time")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_sweep(result: dict[str, Any], path: Path) -> str:
    levels = result["levels"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [f"{lv['backlog']:,}" for lv in levels]
    xs = range(len(levels))
    idle = [lv["idle_tick_ms"]["p50"] or 0 for lv in levels]
    due = [lv["due_tick_ms"]["p50"] or 0 for lv in levels]
    ax.bar([x - 0.2 for x in xs], idle, width=0.4, label="idle tick p50")
    ax.bar(
        [x + 0.2 for x in xs], due, width=0.4, label=f"tick with {levels[0]['due_per_tick'] if levels else 0} due p50"
    )
    ax.set_xticks(list(xs), labels)
    ax.set_xlabel("future payments in the table")
    ax.set_ylabel("tick duration (ms)")
    ax.set_yscale("log")
    ax.set_title("Sweep tick vs backlog")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_api(result: dict[str, Any], path: Path) -> str:
    phases = result["phases"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [p["name"] for p in phases]
    left.barh(names, [p["throughput_rps"] for p in phases], color="tab:blue")
    left.axvline(500, color="tab:red", linestyle="--", label="POST target 500/s")
    left.set_xlabel("requests/s")
    left.set_title("Throughput")
    left.legend(fontsize=8)
    left.invert_yaxis()
    p50 = [p["latency_ms"]["p50"] or 0 for p in phases]
    p99 = [p["latency_ms"]["p99"] or 0 for p in phases]
    ys = range(len(phases))
    right.barh([y - 0.2 for y in ys], p50, height=0.4, label="p50")
    right.barh([y + 0.2 for y in ys], p99, height=0.4, label="p99")
    right.set_yticks(list(ys), names)
    right.axvline(50, color="tab:red", linestyle="--", label="p99 target 50 ms (half load)")
    right.set_xlabel("latency (ms)")
    right.set_title("Latency")
    right.legend(fontsize=8)
    right.invert_yaxis()
    return _save(fig, path)


def plot_cpu(samples: list[Sample], phases: list[dict[str, Any]], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(12, 5))
    if len(samples) >= 2:
        t0 = samples[0].at
        times = [(s.at - t0) for s in samples[1:]]
        series: dict[str, list[float]] = {name: [] for name in (*OUR_COMPONENTS, "others")}
        for previous, current in itertools.pairwise(samples):
            dt = max(current.at - previous.at, 1e-6)
            ours = 0.0
            for name in OUR_COMPONENTS:
                value = max(0.0, current.cpu.get(name, 0.0) - previous.cpu.get(name, 0.0)) / dt
                series[name].append(value)
                ours += value
            busy = (current.system_busy - previous.system_busy) / dt
            series["others"].append(max(0.0, busy - ours))
        ax.stackplot(times, *series.values(), labels=[LABELS.get(k, k) for k in series])
        for phase in phases:
            ax.axvspan(phase["start"] - t0, phase["end"] - t0, alpha=0.06, color="black")
            ax.text(phase["start"] - t0, ax.get_ylim()[1] * 0.97, phase["name"], fontsize=8, va="top")
    ax.set_xlabel("seconds since the stack started")
    ax.set_ylabel("CPU cores")
    ax.set_title("CPU per component")
    ax.legend(loc="upper left", fontsize=7, ncol=2)
    return _save(fig, path)


def write_plots(results: dict[str, Any], samples: list[Sample], out_dir: Path, stamp: str) -> dict[str, str]:
    """One PNG per workload that ran; returns {name: file name}. A failing plot is logged, not fatal."""
    workloads = results.get("workloads", {})
    made: dict[str, str] = {}
    jobs: list[tuple[str, Any]] = [
        ("burst", lambda p: plot_burst(workloads["burst"], p)),
        ("steady", lambda p: plot_steady(workloads["steady"], p)),
        ("sweep", lambda p: plot_sweep(workloads["sweep"], p)),
        ("api", lambda p: plot_api(workloads["api"], p)),
    ]
    for name, job in jobs:
        if name in workloads:
            try:
                made[name] = job(out_dir / f"{stamp}-{name}.png")
            except Exception:
                logger.exception("plot %s", name)
    try:
        made["cpu"] = plot_cpu(samples, results.get("phases", []), out_dir / f"{stamp}-cpu.png")
    except Exception:
        logger.exception("plot cpu")
    return made
