"""Where the CPU goes, in the harness process: cProfile of the execution path and of a POST, run in-process.

The stack's own processes (gunicorn, the Celery worker) are sampled with py-spy from
outside instead (``bench/pyspy.py``); this in-process profile adds exact call counts and
the split between the steps of one code path.

``cpu_profile()`` runs ``cProfile`` with each thread's own CPU clock
(``time.thread_time``) in the calling thread and in every thread started
while it is active (``threading.setprofile``): the gateway adapter's pool
threads included. Time is attributed to the function that spent it
(``tottime``) and summed by package. cProfile's own overhead inflates
call-heavy pure-Python code, so the shares are indicative, not exact. Threads
must have finished (or stopped calling) before the report is read: a call
still open in another thread would be closed with the wrong thread's clock.
"""

from __future__ import annotations

import cProfile
import pstats
import sysconfig
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

PROJECT_ROOT = str(Path(__file__).resolve().parent.parent) + "/"


STDLIB = sysconfig.get_paths()["stdlib"] + "/"


def _c_function(function: str) -> str:
    """``<method 'get' of 'dict' objects>`` → ``dict.get``; ``<built-in method time.sleep>`` → ``time.sleep``."""
    name = function.strip("<>")
    if name.startswith("method '") and " of '" in name:
        method, _, owner = name[len("method '") :].partition("' of '")
        return owner.split("'")[0] + "." + method
    return name.removeprefix("built-in method ").removeprefix("built-in function ")


def locate(filename: str, function: str) -> tuple[str, str]:
    """(owner, function key): the package or module a profiled function belongs to, and its full name.

    Owners are coarse enough to read (``django.db``, ``rest_framework``, ``stdlib:logging``,
    ``payments.gateways``, ``C`` for built-ins), function keys are ``module/path:function``.
    """
    if filename == "~":
        return "C", "C:" + _c_function(function)
    if "site-packages/" in filename:
        relative = filename.split("site-packages/", 1)[1].removesuffix(".py")
        parts = relative.split("/")
        owner = ".".join(parts[:2]) if parts[0] in ("django", "rest_framework") and len(parts) > 2 else parts[0]
        return owner, f"{relative}:{function}"
    if filename.startswith(PROJECT_ROOT):
        relative = filename[len(PROJECT_ROOT) :].removesuffix(".py")
        return ".".join(relative.split("/")[:2]), f"{relative}:{function}"
    if filename.startswith(STDLIB):
        relative = filename[len(STDLIB) :].removesuffix(".py")
        return "stdlib:" + relative.split("/")[0], f"{relative}:{function}"
    return filename, f"{filename}:{function}"


class CpuProfile:
    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()
        self.elapsed = 0.0

    def _start_in_thread(self, frame: FrameType, event: str, arg: Any) -> None:
        profile = cProfile.Profile(time.thread_time)
        with self._lock:
            self.profiles.append(profile)
        profile.enable()  # replaces this hook in the new thread

    def report(self, top: int = 12) -> dict[str, Any]:
        merged: dict[tuple[str, int, str], float] = {}
        for profile in list(self.profiles):
            try:
                stats = pstats.Stats(profile)
            except (TypeError, ValueError):  # a thread that never ran a profiled call
                continue
            for (filename, line, function), entry in stats.stats.items():  # type: ignore[attr-defined]
                merged[(filename, line, function)] = merged.get((filename, line, function), 0.0) + entry[2]
        total = sum(merged.values())
        by_package: dict[str, float] = {}
        by_function: dict[str, float] = {}
        for (filename, _line, function), seconds in merged.items():
            owner, key = locate(filename, function)
            by_package[owner] = by_package.get(owner, 0.0) + seconds
            by_function[key] = by_function.get(key, 0.0) + seconds

        def shares(totals: dict[str, float]) -> list[dict[str, Any]]:
            if total <= 0:
                return []
            ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
            return [{"name": name, "share": round(value / total, 3)} for name, value in ranked]

        return {
            "method": "cProfile on per-thread CPU clocks, all threads, in the harness process",
            "seconds": round(self.elapsed, 3),
            "profiled_cpu_seconds": round(total, 3),
            "threads": len(self.profiles),
            "by_package": shares(by_package),
            "by_function": shares(by_function),
        }


@contextmanager
def cpu_profile() -> Iterator[CpuProfile]:
    result = CpuProfile()
    main = cProfile.Profile(time.thread_time)
    result.profiles.append(main)
    threading.setprofile(result._start_in_thread)
    started = time.perf_counter()
    main.enable()
    try:
        yield result
    finally:
        main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        result.elapsed = time.perf_counter() - started
