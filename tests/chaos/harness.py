"""Crash injection: SIGKILL the pipeline at named points, recover, and check every window.

`python -m tests.chaos.harness [POINT ...]` (what `make chaos` runs) prints a table of injection
point x stack. For each point, on a fresh embedded pipeline (DuckDB source, local stage, DuckDB
target, SQLite ledger):

1. a flow run in a child process is killed with SIGKILL at the point (ledgerflow.failpoints);
2. the normal recovery runs: two more scheduled runs (the first releases the stale lock in its
   end-of-run cleanup, the second loads what is left);
3. every window must be COMPLETED with target rows == source count, no event id twice, and
   nothing left IN_PROGRESS.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# The child runs share one Prefect API database with this process; set before Prefect loads.
_HOME = Path(tempfile.mkdtemp(prefix="ledgerflow-chaos-"))
os.environ.setdefault("PREFECT_HOME", str(_HOME / "prefect"))
os.environ.setdefault(
    "PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{_HOME / 'prefect.db'}"
)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.pop("PREFECT_API_URL", None)

import asyncio  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import timedelta  # noqa: E402

from ledgerflow.demo import DEMO_START  # noqa: E402
from ledgerflow.failpoints import POINTS  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.integration.kit import Pipeline  # noqa: E402

RUN = (
    "import asyncio, sys\n"
    "from ledgerflow.flows.pipeline import windowed_pipeline\n"
    "state = asyncio.run(windowed_pipeline(config_block=sys.argv[1], return_state=True))\n"
    "sys.exit(0 if state.is_completed() else 3)\n"
)


@dataclass(frozen=True)
class Outcome:
    point: str
    stack: str
    killed: bool
    ok: bool
    detail: str


def run_flow(name: str, failpoint: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "LEDGERFLOW_FAILPOINT"}
    if failpoint:
        env["LEDGERFLOW_FAILPOINT"] = failpoint
    done = subprocess.run(
        [sys.executable, "-c", RUN, name], env=env, capture_output=True, text=True, timeout=300
    )
    return done.returncode


def check(pipeline: Pipeline) -> tuple[bool, str]:
    records = asyncio.run(pipeline.records())
    problems = []
    stuck = [r.id for r in records if r.pipeline_status == "IN_PROGRESS"]
    if stuck:
        problems.append(f"IN_PROGRESS: {stuck}")
    not_done = [(r.id, r.pipeline_status) for r in records if r.pipeline_status != "COMPLETED"]
    if not_done:
        problems.append(f"not COMPLETED: {not_done}")
    for r in records:
        source = pipeline._scalar_row(
            pipeline.source_path,
            "SELECT count(*) FROM web_events WHERE ts >= ? AND ts < ?",
            [r.window_start_time, r.window_end_time],
        )[0]
        target = (
            pipeline._scalar_row(
                pipeline.warehouse,
                "SELECT count(*) FROM web_events WHERE ts >= ? AND ts < ?",
                [r.window_start_time, r.window_end_time],
            )[0]
            if pipeline.warehouse.exists()
            else 0
        )
        if source != target:
            problems.append(f"window {r.id}: source {source} != target {target}")
    total, distinct = pipeline.warehouse_rows()
    if total != distinct:
        problems.append(f"{total - distinct} duplicate event ids")
    return not problems, "; ".join(problems) or f"{len(records)} windows, {total} rows, exact"


def inject(point: str, root: Path) -> Outcome:
    pipeline = Pipeline(root, rows=2000)
    name = asyncio.run(
        pipeline.save(
            end=DEMO_START + timedelta(hours=8),
            concurrency=1,
            max_retry_task=0,
            max_window_attempts=5,
            stale_threshold_hours=0.0005,  # 1.8 s: a dead worker's lock goes stale quickly
        )
    )
    code = run_flow(name, point)
    killed = code == -9
    time.sleep(2.5)  # past the stale threshold
    for _ in range(2):  # the normal recovery: the next scheduled runs
        run_flow(name, None)
    ok, detail = check(pipeline)
    if not killed:
        ok, detail = False, f"the run was not killed at {point} (exit {code}); {detail}"
    return Outcome(point, "embedded", killed, ok, detail)


def main(points: list[str] | None = None) -> int:
    chosen = points or list(POINTS)
    unknown = [p for p in chosen if p not in POINTS]
    if unknown:
        print(f"unknown points {unknown}; allowed: {list(POINTS)}")
        return 2
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:
        for point in chosen:
            outcomes.append(inject(point, Path(tmp) / point))
    table = Table(
        title="crash injection: SIGKILL at each point, then recovery", title_justify="left"
    )
    for column in ("injection point", "stack", "killed", "result", "detail"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(
            o.point,
            o.stack,
            "yes" if o.killed else "no",
            "[green]OK[/]" if o.ok else "[bold red]FAIL[/]",
            o.detail,
        )
    Console(width=160).print(table)
    passed = sum(o.ok for o in outcomes)
    print(f"{passed} passed, {len(outcomes) - passed} failed")
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
