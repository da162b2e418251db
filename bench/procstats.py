"""CPU and memory of processes from ``/proc`` (psutil is not installed), sampled in a thread.

Components are process trees (gunicorn master and its workers, the Celery worker
and its pool children, ...) plus processes found by a callback (the PostgreSQL
backends serving the benchmark's database) or by name (RabbitMQ's ``beam.smp``,
every ``postgres`` process). CPU is ``utime + stime`` from ``/proc/<pid>/stat``;
memory is RSS (``/proc/<pid>/stat``), PSS (``smaps_rollup``, shared pages
counted once) and the kernel's own peak, ``VmHWM``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    cpu_seconds: float
    rss_bytes: int
    children_cpu_seconds: float  # of its exited, reaped children


def read_stat(pid: int) -> ProcStat | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    open_paren, close_paren = raw.find("("), raw.rfind(")")
    comm = raw[open_paren + 1 : close_paren]
    fields = raw[close_paren + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, rss 24.
    return ProcStat(
        pid=pid,
        comm=comm,
        state=fields[0],
        ppid=int(fields[1]),
        cpu_seconds=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
        rss_bytes=int(fields[21]) * PAGE_SIZE,
        children_cpu_seconds=(int(fields[13]) + int(fields[14])) / CLOCK_TICKS,
    )


def read_status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` line of ``/proc/<pid>/status`` (``VmHWM``, ``VmRSS``)."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def read_pss_bytes(pid: int) -> int | None:
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def all_stats() -> dict[int, ProcStat]:
    stats = {}
    for entry in os.listdir(PROC):
        if entry.isdigit() and (stat := read_stat(int(entry))) is not None:
            stats[stat.pid] = stat
    return stats


def descendants(root: int, stats: dict[int, ProcStat]) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in found or pid not in stats:
            continue
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    first = (PROC / "stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


@dataclass
class Sample:
    at: float  # time.time()
    cpu: dict[str, float]  # component → cumulative CPU seconds (of the processes seen so far)
    rss: dict[str, int]  # component → sum of RSS now
    pss: dict[str, int]  # component → sum of PSS now (shared pages counted once)
    processes: dict[str, int]  # component → number of processes
    system_busy: float
    system_total: float


@dataclass
class ComponentSource:
    """Where a component's processes come from: a root pid (its tree), a callback, or a name.

    ``cpu_total`` replaces the sum over the processes seen at sampling instants, for components whose
    processes live shorter than a sampling interval (PostgreSQL backends of clients that reconnect).
    """

    name: str
    root: int | None = None
    pids: Callable[[], Iterable[int]] | None = None
    comm: str | None = None
    cpu_total: Callable[[], float] | None = None


class PidTracker:
    """Follows short-lived processes closely: polls ``pids()`` every ``interval`` and keeps each one's
    last CPU reading, so a process that exits between two samples loses at most one interval of CPU."""

    def __init__(self, pids: Callable[[], Iterable[int]], interval: float = 0.05) -> None:
        self._pids = pids
        self.interval = interval
        self._cpu: dict[int, float] = {}
        self._live: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-pid-tracker", daemon=True)
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                live = set(self._pids())
            except Exception as exc:
                if len(self.errors) < 10:
                    self.errors.append(repr(exc))
                continue
            for pid in live | self._live:
                stat = read_stat(pid)
                if stat is not None:
                    self._cpu[pid] = stat.cpu_seconds
            self._live = live

    def live(self) -> set[int]:
        return set(self._live)

    def cpu_seconds(self) -> float:
        return sum(self._cpu.values())


def postgres_server_cpu(stats: dict[int, ProcStat] | None = None) -> float:
    """Every PostgreSQL process's CPU, exited backends included (the postmaster's reaped children)."""
    stats = stats if stats is not None else all_stats()
    total = 0.0
    for stat in stats.values():
        if stat.comm != "postgres":
            continue
        total += stat.cpu_seconds
        parent = stats.get(stat.ppid)
        if parent is None or parent.comm != "postgres":  # the postmaster
            total += stat.children_cpu_seconds
    return total


@dataclass
class Sampler:
    """Samples every ``interval`` seconds in a daemon thread; ``samples`` grows until ``stop()``."""

    interval: float = 1.0
    sources: list[ComponentSource] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    # (component, pid) → last CPU seconds seen: CPU of an exited process is kept, not lost.
    _cpu_seen: dict[tuple[str, int], float] = field(default_factory=dict)
    # (component, pid) → (command line, peak RSS in KiB)
    peaks: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    errors: list[str] = field(default_factory=list)

    def add(self, source: ComponentSource) -> None:
        with self._lock:
            self.sources = [s for s in self.sources if s.name != source.name] + [source]

    def remove(self, name: str) -> None:
        with self._lock:
            self.sources = [s for s in self.sources if s.name != name]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except Exception as exc:  # a sampler must never take the run down
                if len(self.errors) < 20:
                    self.errors.append(repr(exc))
            self._stop.wait(max(0.05, self.interval - (time.monotonic() - started)))

    def _members(self, source: ComponentSource, stats: dict[int, ProcStat]) -> set[int]:
        if source.root is not None:
            return descendants(source.root, stats)
        if source.pids is not None:
            return {pid for pid in source.pids() if pid in stats}
        if source.comm is not None:
            return {pid for pid, stat in stats.items() if stat.comm == source.comm}
        return set()

    def sample(self) -> Sample:
        stats = all_stats()
        busy, total = system_cpu()
        with self._lock:
            sources = list(self.sources)
        rss: dict[str, int] = {}
        pss: dict[str, int] = {}
        counts: dict[str, int] = {}
        for source in sources:
            members = self._members(source, stats)
            rss[source.name] = sum(stats[pid].rss_bytes for pid in members)
            counts[source.name] = len(members)
            pss[source.name] = 0
            for pid in members:
                self._cpu_seen[(source.name, pid)] = stats[pid].cpu_seconds
                hwm = read_status_kib(pid, "VmHWM")
                if hwm is not None:
                    previous = self.peaks.get((source.name, pid))
                    if previous is None or hwm > previous[1]:
                        self.peaks[(source.name, pid)] = (previous[0] if previous else cmdline(pid)[:200], hwm)
                pss[source.name] += read_pss_bytes(pid) or stats[pid].rss_bytes
        cpu: dict[str, float] = dict.fromkeys((s.name for s in sources), 0.0)
        for (name, _pid), seconds in self._cpu_seen.items():
            cpu[name] = cpu.get(name, 0.0) + seconds
        for source in sources:
            if source.cpu_total is not None:
                cpu[source.name] = source.cpu_total()
        cpu["postgres_server"] = postgres_server_cpu(stats)
        sample = Sample(time.time(), cpu, rss, pss, counts, busy, total)
        self.samples.append(sample)
        return sample

    # --- analysis -----------------------------------------------------------------------------

    def window(self, start: float, end: float) -> dict[str, Any]:
        """CPU used per component between two instants (``time.time()``), in cores and seconds."""
        inside = [s for s in self.samples if start <= s.at <= end]
        before = [s for s in self.samples if s.at <= start]
        after = [s for s in self.samples if s.at >= end]
        first = before[-1] if before else (inside[0] if inside else None)
        last = after[0] if after else (inside[-1] if inside else None)
        if first is None or last is None or last.at <= first.at:
            return {"seconds": 0.0, "cores": {}, "cpu_seconds": {}, "system_busy_cores": None, "cores_total": None}
        elapsed = last.at - first.at
        cpu_seconds = {name: last.cpu.get(name, 0.0) - first.cpu.get(name, 0.0) for name in last.cpu}
        wall_cores = (last.system_total - first.system_total) / elapsed
        return {
            "seconds": round(elapsed, 3),
            "cpu_seconds": {k: round(v, 3) for k, v in cpu_seconds.items()},
            "cores": {k: round(v / elapsed, 3) for k, v in cpu_seconds.items()},
            "system_busy_cores": round((last.system_busy - first.system_busy) / elapsed, 3),
            "cores_total": round(wall_cores, 3),
        }

    def peak_memory(self) -> dict[str, dict[str, Any]]:
        """Per component: the largest single-process peak RSS, and the peak of the component's total."""
        result: dict[str, dict[str, Any]] = {}
        for (name, _pid), (command, hwm_kib) in self.peaks.items():
            entry = result.setdefault(name, {"max_process_peak_rss_mb": 0.0, "processes": []})
            entry["max_process_peak_rss_mb"] = max(entry["max_process_peak_rss_mb"], round(hwm_kib / 1024, 1))
            entry["processes"].append({"command": command, "peak_rss_mb": round(hwm_kib / 1024, 1)})
        for name, entry in result.items():
            entry["peak_total_rss_mb"] = round(max((s.rss.get(name, 0) for s in self.samples), default=0) / 2**20, 1)
            entry["peak_total_pss_mb"] = round(max((s.pss.get(name, 0) for s in self.samples), default=0) / 2**20, 1)
            entry["processes"].sort(key=lambda p: -p["peak_rss_mb"])
            del entry["processes"][8:]
        return result
