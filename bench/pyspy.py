"""py-spy profiles of the stack's own processes while a workload runs.

``Recording(pid, seconds, path)`` samples a process and its children (gunicorn's
workers, the Celery pool) from outside, without pausing them (``--nonblocking``), and
writes collapsed stacks (``--format raw``: one ``frame;frame;… count`` line per stack,
the input format of flamegraph.pl and speedscope). Only threads holding the GIL are
sampled (``--gil``), so a share of the samples is a share of the time the processes
spent running Python; C code that releases the GIL (libpq's network waits, the gthread
poller) is not counted. ``summarize`` attributes each sample to the function at the top
of its stack (self time) and to every function of this project on the stack (inclusive
time), with the owners of ``bench.profiler.locate``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .profiler import PROJECT_ROOT, locate

# "function (path/to/file.py:123)"; py-spy leaves out the parenthesis for frames without a file
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<filename>.*):(?P<line>\d+)\)$")
SAMPLE_RATE = 100  # per second and process
SHARE_DIGITS = 3


def executable() -> str | None:
    """The py-spy next to this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Recording:
    """A py-spy process sampling ``pid`` and its subprocesses for ``seconds``, started at once."""

    def __init__(self, pid: int, seconds: float, path: Path) -> None:
        self.path = path
        self.seconds = seconds
        self.error = ""
        self.process: subprocess.Popen[str] | None = None
        binary = executable()
        if binary is None:
            self.error = "py-spy is not installed"
            return
        # --gil: only threads holding the GIL, i.e. running Python; threads waiting on a socket
        # (psycopg, redis, the gthread poller) would otherwise count as busy.
        command = [binary, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--gil"]
        command += ["--full-filenames"]
        command += ["--rate", str(SAMPLE_RATE), "--duration", str(max(1, round(seconds)))]
        command += ["--format", "raw", "--output", str(path)]
        self.process = subprocess.Popen(  # noqa: S603 (our own arguments)
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def finish(self, top: int = 12) -> dict[str, Any]:
        """Wait for py-spy and summarize what it wrote; ``{"error": ...}`` when it could not sample."""
        if self.process is not None:
            try:
                output, _ = self.process.communicate(timeout=self.seconds + 30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                output, _ = self.process.communicate()
            if self.process.returncode != 0 or not self.path.exists():
                self.error = f"py-spy exited {self.process.returncode}: {output.strip()[-300:]}"
        if self.error:
            return {"error": self.error}
        summary = summarize(self.path.read_text(), top=top)
        summary["collapsed_stacks"] = str(self.path)
        return summary


def _is_ours(filename: str) -> bool:
    return filename.startswith(PROJECT_ROOT) and "site-packages/" not in filename


def _frames(stack: str) -> list[tuple[str, str]]:
    """(filename, function) of each Python frame, outermost first; py-spy's process and thread labels dropped."""
    frames = []
    for part in stack.split(";"):
        match = _FRAME.match(part)
        if match:
            frames.append((match["filename"], match["function"]))
    return frames


def summarize(collapsed: str, top: int = 12) -> dict[str, Any]:
    """Self time by package and by function, and inclusive time of this project's functions, as shares."""
    by_package: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    ours_inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        total += count
        owner, key = locate(*frames[-1])
        by_package[owner] += count
        by_function[key] += count
        ours = {locate(filename, function)[1] for filename, function in frames if _is_ours(filename)}
        for name in ours:
            ours_inclusive[name] += count

    def shares(counts: Counter[str]) -> list[dict[str, Any]]:
        # The count is what sums exactly; the share is rounded for reading (rounded shares need not
        # sum to 1, and a package with one sample in thousands reads 0.0).
        return [
            {"name": name, "samples": n, "share": round(n / total, SHARE_DIGITS)} for name, n in counts.most_common(top)
        ]

    return {
        "method": f"py-spy at {SAMPLE_RATE} Hz per process on the stack's own processes, GIL-holding threads",
        "samples": total,
        "by_package": shares(by_package),
        "by_function": shares(by_function),
        "ours_inclusive": shares(ours_inclusive),
    }
