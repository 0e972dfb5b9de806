"""Where a whole `ledgerflow` command's time and memory go, phase by phase.

`python -m bench.run_probe [--tracemalloc] [--what-if NAME ...] ARGS...` runs `ledgerflow
ARGS...` in this process (the console script's entry point) while a thread samples the process's
resident set (VmRSS) every 10 ms and, with `--tracemalloc`, the bytes Python's allocator holds.
`--what-if` tries a fix from outside before anyone changes the product: `trim` (after each
Prefect task, Arrow's pool releases unused memory and glibc's malloc_trim returns freed heap to
the system). The DuckDB target's memory is its block's `memory_limit` and `threads` fields.
Phase marks come from the interpreter's start, the imports, and Prefect's own log records
(flow and task runs created and finished), so no product code is touched. At exit it prints, as
its last line, `{"phases": [...], "peak_mb": ...}`: per phase its start and length in seconds,
the CPU seconds spent in it, and the highest RSS (and Python heap) seen in it.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

T0 = time.perf_counter()
CPU0 = time.process_time()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _process_start_s() -> float:
    """Seconds from the kernel starting this process to now (interpreter start-up included)."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    import os

    return uptime - ticks / os.sysconf("SC_CLK_TCK")


class Probe:
    def __init__(self, heap: bool) -> None:
        self.heap = heap
        self.marks: list[tuple[float, float, str]] = [(0.0, 0.0, "import the cli")]
        self.samples: list[tuple[float, float, float]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def mark(self, name: str) -> None:
        self.marks.append((time.perf_counter() - T0, time.process_time() - CPU0, name))

    def _sample(self) -> None:
        while not self.done.is_set():
            heap = tracemalloc.get_traced_memory()[0] / 2**20 if self.heap else 0.0
            self.samples.append((time.perf_counter() - T0, _rss_mb(), heap))
            self.done.wait(0.01)

    def report(self, before_main: float) -> dict[str, Any]:
        self.done.set()
        self.thread.join()
        self.mark("end")
        phases = []
        for (t, cpu, name), (t_next, cpu_next, _) in zip(self.marks, self.marks[1:], strict=False):
            inside = [s for s in self.samples if t <= s[0] < t_next] or [(t, _rss_mb(), 0.0)]
            phases.append(
                {
                    "phase": name,
                    "start_s": round(t + before_main, 3),
                    "seconds": round(t_next - t, 3),
                    "cpu_s": round(cpu_next - cpu, 3),
                    "max_rss_mb": round(max(s[1] for s in inside), 1),
                    "max_heap_mb": round(max(s[2] for s in inside), 1) if self.heap else None,
                }
            )
        return {
            "interpreter_start_s": round(before_main, 3),
            "phases": phases,
            "peak_mb": _hwm_mb(),
        }


class PrefectMarks(logging.Handler):
    """Turns Prefect's run-lifecycle log records into phase marks."""

    def __init__(self, probe: Probe) -> None:
        super().__init__(logging.INFO)
        self.probe = probe

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith(("Created task run", "Created flow run", "Finished in state")):
            who = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", "")
            self.probe.mark(f"{text.split(' for ')[0].split(' in state')[0]} {who}".strip())


class Trim(logging.Handler):
    """Hands freed memory (Arrow's pool, then glibc's heap) back to the system whenever a
    Prefect task run finishes."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        import ctypes

        self.libc = ctypes.CDLL("libc.so.6")

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Finished in state"):
            import pyarrow as pa

            pa.default_memory_pool().release_unused()
            self.libc.malloc_trim(0)


def main() -> None:
    args = sys.argv[1:]
    heap = args[:1] == ["--tracemalloc"]
    if heap:
        args = args[1:]
        tracemalloc.start()
    what_if: list[str] = []
    while args[:1] == ["--what-if"]:
        what_if.append(args[1])
        args = args[2:]
    before_main = _process_start_s() - (time.perf_counter() - T0)
    probe = Probe(heap)
    probe.thread.start()
    from ledgerflow.cli import app

    probe.mark("import prefect, the flow and every block module")
    # What `ledgerflow run` imports first thing; imported here to time it apart from the API.
    import ledgerflow.flows.pipeline  # noqa: F401

    probe.mark("Prefect ephemeral API start, flow run created")
    handler = PrefectMarks(probe)
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
        logging.getLogger(name).addHandler(handler)
    if "trim" in what_if:
        logging.getLogger("prefect.task_runs").addHandler(Trim())
    code = 0
    try:
        app(args, prog_name="ledgerflow")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    report = probe.report(before_main)
    report["what_if"] = what_if
    print(json.dumps(report))
    sys.exit(code)


if __name__ == "__main__":
    main()
