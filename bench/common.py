"""Helpers the benchmarks share: medians, peak RSS, a printed table."""

from __future__ import annotations

import json
import resource
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(width=120)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server the benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _hwm_mb(pid: int | str = "self") -> float | None:
    """VmHWM: the peak RSS of the process's current memory map, in MB.

    Not ru_maxrss: after fork or vfork and exec, a child's ru_maxrss starts at the parent's
    RSS (Linux keeps the pre-exec map's high-water mark), so every contender would report at
    least the size of the benchmark process that started it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


def own_peak_mb() -> float:
    """This process's peak RSS since it started its program (what a worker reports)."""
    return _hwm_mb() or peak_rss_mb()


def run_measured(
    args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[float, float, str]:
    """Run a contender to the end; return (wall seconds, peak RSS MB, stdout).

    The peak is the contender's own (VmHWM, polled while it runs); a worker that prints JSON
    with `peak_mb` (its own VmHWM at exit) gives the exact figure, which wins."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env)
    peak = 0.0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _hwm_mb(proc.pid) or 0.0)
            done.wait(0.02)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:4]} failed: {err.decode()[-2000:]}")
    text = out.decode()
    try:
        reported = json.loads(text.strip().splitlines()[-1]).get("peak_mb")
    except (ValueError, IndexError, AttributeError):
        reported = None
    return wall, float(reported or peak), text


def show(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="right" if c != columns[0] else "left")
    for row in rows:
        table.add_row(*(f"{v:,.3f}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)
