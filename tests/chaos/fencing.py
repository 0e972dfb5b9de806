"""Fencing: a frozen worker that wakes up after its window was finished by another writes nothing.

`python -m tests.chaos.fencing [POINT ...]` (part of `make chaos`) runs, for each point, on the
embedded stack with a Postgres ledger:

1. worker A (a flow run in a child process) freezes itself with SIGSTOP at the point
   (ledgerflow.failpoints, `POINT:stop`), holding the lease on its first window;
2. past the stale threshold, the normal recovery runs as worker B (two scheduled runs) and
   finishes every window, A's included;
3. the target, the ledger and the stage are snapshotted, A gets SIGCONT and runs on until it
   exits; then nothing may have changed, and every window must still be exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.chaos import harness  # sets up the shared Prefect home before Prefect loads
from tests.chaos.racing import drop_pg, fresh_pg_url
from tests.chaos.report import chosen_points, mark, report
from tests.integration.kit import Pipeline

POINTS = ("after_claim", "after_stage_before_ledger", "after_load_before_ledger")


@dataclass(frozen=True)
class Fenced:
    point: str
    stopped: bool
    zombie_exit: int | None
    lease_lost_said: bool
    unchanged: bool
    exact: bool
    detail: str

    @property
    def ok(self) -> bool:
        return self.stopped and self.unchanged and self.exact


def state_of_process(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "gone"


def wait_stopped(proc: subprocess.Popen[bytes], timeout: float = 180) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if state_of_process(proc.pid) == "T":
            return True
        time.sleep(0.1)
    return False


def snapshot(pipeline: Pipeline) -> str:
    """A digest of everything a worker could write: target rows, ledger rows, staged files."""
    digest = hashlib.sha256()
    if pipeline.warehouse.exists():
        rows = pipeline._scalar_row(
            pipeline.warehouse,
            "SELECT count(*), coalesce(string_agg(md5(CAST(w AS VARCHAR)), ',' "
            "ORDER BY event_id), '') FROM web_events w",
        )
        digest.update(repr(rows).encode())
    for record in asyncio.run(pipeline.records()):
        digest.update(record.model_dump_json().encode())
    stage = pipeline.root / "stage"
    for f in sorted(stage.rglob("*")) if stage.exists() else []:
        stat = f.stat()
        digest.update(f"{f.relative_to(stage)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def fence(point: str, root: Path, ledger_url: str) -> Fenced:
    pipeline = Pipeline(root, rows=2000, ledger_url=ledger_url)
    name = asyncio.run(pipeline.save(**harness.CRASH_CONFIG))
    env = {**os.environ, "LEDGERFLOW_FAILPOINT": f"{point}:stop"}
    log = root / "zombie.log"
    with log.open("wb") as out:
        zombie = subprocess.Popen(
            [sys.executable, "-c", harness.RUN, name], env=env, stdout=out, stderr=out
        )
    try:
        stopped = wait_stopped(zombie)
        time.sleep(2.5)  # past the stale threshold
        for _ in range(2):  # the normal recovery: worker B's scheduled runs
            harness.run_flow(name, None)
        before = snapshot(pipeline)
        zombie.send_signal(signal.SIGCONT)
        code = zombie.wait(timeout=300)
    finally:
        if zombie.poll() is None:
            zombie.kill()
            zombie.wait()
    after = snapshot(pipeline)
    said = "was lost" in log.read_text(errors="replace")
    exact, detail = harness.Embedded(root).check(pipeline)
    unchanged = before == after
    if not unchanged:
        detail = f"the zombie changed the target, ledger or stage after SIGCONT; {detail}"
    return Fenced(point, stopped, code, said, unchanged, exact, detail)


def main(points: list[str]) -> int:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for point in chosen_points(points, POINTS):
            url = fresh_pg_url()
            try:
                results.append(fence(point, Path(tmp) / point, url))
            finally:
                drop_pg(url)
    return report(
        "fencing: SIGSTOP a worker past the stale threshold, finish its window, SIGCONT it",
        ("frozen at", "zombie exit", "said lease lost", "wrote after SIGCONT", "result", "detail"),
        [
            (
                r.point,
                str(r.zombie_exit),
                "yes" if r.lease_lost_said else "no",
                "nothing" if r.unchanged else "[bold red]something[/]",
                mark(r.ok),
                r.detail if r.stopped else f"never stopped; {r.detail}",
            )
            for r in results
        ],
        [r.ok for r in results],
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
