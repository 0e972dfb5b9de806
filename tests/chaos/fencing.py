"""Fencing: a frozen worker that wakes up after its window was taken over writes nothing.

`python -m tests.chaos.fencing [POINT ...]` (part of `make chaos`) runs, for each point, on the
embedded stack with a Postgres ledger:

1. worker A (a flow run in a child process) freezes itself with SIGSTOP at the point
   (ledgerflow.failpoints, `POINT:stop`), holding the lease on its first window;
2. past the stale threshold, the normal recovery runs as worker B (two scheduled runs) and
   finishes every window, A's included;
3. the target, the ledger and the stage are snapshotted, A gets SIGCONT and runs on until it
   exits; then nothing may have changed, and every window must still be exact.

At the target's fence points (`before_target_txn`: A staged its window and made its last ledger
write; `before_commit`: A's target transaction ran every statement) the source changes while A is
frozen (rows added to and deleted from A's window), the stale lock is released, and worker B
loads the newer rows under a newer claim. Then the target must hold exactly the newer source rows,
the ledger must be COMPLETED with those counts, and A must have committed nothing that survives:
frozen before its transaction, the target's fence refuses it outright (nothing changes after
SIGCONT); frozen inside it, A holds the fence row (and, on DuckDB, the file), so B waits for A,
whose commit the newer claim's load then replaces.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from ledgerflow.failpoints import FENCE_POINTS
from ledgerflow.ledger import Ledger, PipelineRecord

from tests.chaos import harness  # sets up the shared Prefect home before Prefect loads
from tests.chaos.racing import drop_pg, fresh_pg_url
from tests.chaos.report import chosen_points, mark, report
from tests.integration.kit import Pipeline

LEDGER_POINTS = ("after_claim", "after_stage_before_ledger", "after_load_before_ledger")
POINTS = (*LEDGER_POINTS, *FENCE_POINTS)
# Inside its transaction on fakesnow, the zombie's open DuckDB transaction makes B's fence write
# fail at once (a conflict) instead of waiting on Snowflake's lock; that row needs a real Snowflake.
WAREHOUSE_POINTS = ("before_target_txn",)
ADDED, DELETED = 3, 5  # rows added to and deleted from the frozen worker's window


@dataclass(frozen=True)
class Fenced:
    point: str
    stopped: bool
    zombie_exit: int | None
    zombie: str
    unchanged: bool | None  # None: not measurable (B waited for A to finish)
    exact: bool
    detail: str
    source_changed: bool = False
    stack: str = "embedded"

    @property
    def ok(self) -> bool:
        return self.stopped and self.unchanged is not False and self.exact


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
    exact, detail = harness.Embedded(root).check(pipeline)
    unchanged = before == after
    if not unchanged:
        detail = f"the zombie changed the target, ledger or stage after SIGCONT; {detail}"
    return Fenced(point, stopped, code, zombie_said(log), unchanged, exact, detail)


def wrote(r: Fenced) -> str:
    if r.unchanged is False:
        return "[bold red]something[/]"
    if r.zombie == "committed, then lease lost":
        return "its commit, replaced by B"
    if r.unchanged is None:  # B waited for A: no quiet moment to snapshot; A's log tells
        return "nothing (rolled back)" if r.zombie.startswith("interrupted") else "unknown"
    return "nothing"


def zombie_said(log: Path) -> str:
    """What the woken worker reported: refused by the target's fence, or its lease lost (and
    before which write)."""
    text = log.read_text(errors="replace")
    if "superseded by a later claim" in text:
        return "fenced out"
    if "before 'stage-to-target done'" in text or "finished before it could be interr" in text:
        return "committed, then lease lost"
    if "interrupted target work ended with" in text:
        return "interrupted, rolled back"
    lost = re.search(r"was lost before '([^']+)'", text)
    return f"lease lost ({lost.group(1)})" if lost else "said nothing"


class EmbeddedSide:
    """The embedded stack: DuckDB source and target, local stage; the ledger given."""

    name = "embedded"

    def __init__(self, root: Path, ledger_url: str) -> None:
        self.pipeline = Pipeline(root, rows=2000, ledger_url=ledger_url)
        self.pipeline_name = asyncio.run(self.pipeline.save(**harness.CRASH_CONFIG))

    def change(self, record: PipelineRecord) -> None:
        """Late rows arrive in the window and some of its rows are deleted at the source."""
        start, end = record.window_start_time, record.window_end_time
        self.pipeline.add_late_rows(start + (end - start) / 2, ADDED)
        self.pipeline._scalar_row(
            self.pipeline.source_path,
            "DELETE FROM web_events WHERE event_id IN (SELECT event_id FROM web_events "
            "WHERE ts >= ? AND ts < ? AND event_id NOT LIKE 'late-%' ORDER BY ts LIMIT ?)",
            [start, end, DELETED],
        )

    def ids(self, record: PipelineRecord) -> tuple[list[str], list[str]]:
        """(source ids, target ids) in the window."""
        sql = (
            "SELECT coalesce(list_sort(list(event_id)), []) FROM web_events "
            "WHERE ts >= ? AND ts < ?"
        )
        bounds = [record.window_start_time, record.window_end_time]
        p = self.pipeline
        return p._scalar_row(p.source_path, sql, bounds)[0], p._scalar_row(
            p.warehouse, sql, bounds
        )[0]

    def totals(self) -> tuple[int, int]:
        return self.pipeline.warehouse_rows()

    def snapshot(self) -> str:
        return snapshot(self.pipeline)


class WarehouseSide:
    """Elasticsearch -> S3 -> Snowflake (osmem, moto, fakesnow), as the crash harness runs it."""

    name = "es-s3-snowflake"

    def __init__(self, warehouse: harness.Warehouse, point: str) -> None:
        self.warehouse = warehouse
        self.pipeline, _ = warehouse.prepare(f"fence_{point}")
        self.pipeline_name = self.pipeline.name
        self.index, self.database = warehouse.index, warehouse.database

    def _es(self) -> Any:
        from elasticsearch import AsyncElasticsearch
        from ledgerflow.blocks.elasticsearch import PlainJsonNode

        return AsyncElasticsearch(self.warehouse.es_url, node_class=PlainJsonNode)

    def change(self, record: PipelineRecord) -> None:
        start, end = record.window_start_time, record.window_end_time

        async def run() -> None:
            es = self._es()
            try:
                middle = (start + (end - start) / 2).isoformat().replace("+00:00", "Z")
                ops: list[dict[str, object]] = []
                for i in range(ADDED):
                    ops += [
                        {"index": {"_index": self.index, "_id": f"late-{i}"}},
                        {"@timestamp": middle, "n": -i},
                    ]
                first = await self._ids(es, start, end)
                ops += [{"delete": {"_index": self.index, "_id": i}} for i in first[:DELETED]]
                await es.bulk(operations=ops, refresh=True)
            finally:
                await es.close()

        asyncio.run(run())

    async def _ids(self, es: Any, start: Any, end: Any) -> list[str]:
        found = await es.search(
            index=self.index,
            query={"range": {"@timestamp": {"gte": start.isoformat(), "lt": end.isoformat()}}},
            size=10000,
            source=False,
            sort=[{"@timestamp": "asc"}, {"_id": "asc"}],
        )
        return [h["_id"] for h in found["hits"]["hits"]]

    def ids(self, record: PipelineRecord) -> tuple[list[str], list[str]]:
        async def source() -> list[str]:
            es = self._es()
            try:
                return sorted(await self._ids(es, record.window_start_time, record.window_end_time))
            finally:
                await es.close()

        rows = self._target(
            "SELECT _ID FROM EVENTS WHERE TS >= %s AND TS < %s ORDER BY _ID",
            (record.window_start_time, record.window_end_time),
        )
        return asyncio.run(source()), [r[0] for r in rows]

    def _target(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with contextlib.closing(self.warehouse.peers.sql_connection(self.database)) as conn:
            cur = conn.cursor()
            cur.execute(sql, params)
            return [tuple(r) for r in cur.fetchall()]

    def totals(self) -> tuple[int, int]:
        [(total, distinct)] = self._target("SELECT COUNT(*), COUNT(DISTINCT _ID) FROM EVENTS")
        return int(total), int(distinct)

    def snapshot(self) -> str:
        digest = hashlib.sha256()
        digest.update(repr(self._target("SELECT * FROM EVENTS ORDER BY _ID")).encode())
        for record in asyncio.run(self.pipeline.records()):
            digest.update(record.model_dump_json().encode())
        return digest.hexdigest()


Side = EmbeddedSide | WarehouseSide


def exact_rows(side: Side, records: list[PipelineRecord]) -> list[str]:
    """Per window: the target holds exactly the source's ids, and the ledger says so."""
    problems = harness.ledger_problems(records)
    for r in records:
        source, target = side.ids(r)
        if source != target:
            extra, missing = set(target) - set(source), set(source) - set(target)
            problems.append(
                f"window {r.id}: target has {len(extra)} rows not in the source "
                f"and lacks {len(missing)}"
            )
        if not r.source_count == r.target_count == len(source):
            problems.append(
                f"window {r.id}: ledger counts {r.source_count}/{r.target_count}, "
                f"source holds {len(source)}"
            )
    total, distinct = side.totals()
    if total != distinct:
        problems.append(f"{total - distinct} duplicate ids")
    return problems


def wait_for(check: Callable[[], bool], timeout: float = 180) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


async def _release(pipeline: Pipeline) -> PipelineRecord:
    """The stale-lock cleanup (what the next run's end-of-run cleanup does); A's window."""
    async with Ledger.from_url(pipeline.ledger_url) as ledger:
        [frozen] = await ledger.windows(pipeline.name, statuses=["IN_PROGRESS"])
        stale = timedelta(hours=harness.CRASH_CONFIG["stale_threshold_hours"])
        released = await ledger.release_stale(pipeline.name, older_than=stale, max_attempts=5)
        assert [r.id for r in released] == [frozen.id], "the frozen worker's lock is not stale"
        return frozen


def claimed_again(pipeline: Pipeline, frozen: PipelineRecord) -> bool:
    record = next(r for r in asyncio.run(pipeline.records()) if r.id == frozen.id)
    return record.fence_token > frozen.fence_token


def supersede(point: str, side: Side, log: Path) -> Fenced:
    """A frozen at a target fence point while its window's source changes and B loads it."""
    pipeline, name = side.pipeline, side.pipeline_name
    env = {**os.environ, "LEDGERFLOW_FAILPOINT": f"{point}:stop"}
    before = after = ""
    with log.open("wb") as out:
        zombie = subprocess.Popen(
            [sys.executable, "-c", harness.RUN, name], env=env, stdout=out, stderr=out
        )
    rescuer: subprocess.Popen[bytes] | None = None
    try:
        stopped = wait_stopped(zombie)
        if not stopped:
            return Fenced(
                point, False, zombie.poll(), zombie_said(log), True, False, "", True, side.name
            )
        time.sleep(2.5)  # past the stale threshold
        frozen = asyncio.run(_release(pipeline))
        side.change(frozen)
        if point == "before_target_txn":
            for _ in range(2):  # worker B's scheduled runs load every window, A's included
                harness.run_flow(name, None)
            before = side.snapshot()
            zombie.send_signal(signal.SIGCONT)
            code = zombie.wait(timeout=300)
            after = side.snapshot()
        else:
            # A holds its transaction (on DuckDB, the file): B claims A's window, then waits
            # for the target; A wakes and finishes; B's load (a newer fence) replaces it.
            rescuer = subprocess.Popen(
                [sys.executable, "-c", harness.RUN, name],
                env={k: v for k, v in os.environ.items() if k != "LEDGERFLOW_FAILPOINT"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if not wait_for(lambda: claimed_again(pipeline, frozen)):
                raise RuntimeError("worker B never claimed the frozen worker's window")
            time.sleep(1)  # B is on its way to the target
            zombie.send_signal(signal.SIGCONT)
            code = zombie.wait(timeout=300)
            rescuer.wait(timeout=300)
            for _ in range(2):  # the next scheduled runs: whatever B left (A's cleanup may
                harness.run_flow(name, None)  # have released B's lock while B waited)
    finally:
        for proc in (zombie, rescuer):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    problems = exact_rows(side, asyncio.run(pipeline.records()))
    total, _ = side.totals()
    said = zombie_said(log)
    stopped_by_a_guard = ("fenced out", "lease lost (heartbeat)", "interrupted, rolled back")
    if point == "before_target_txn" and said not in stopped_by_a_guard:
        # Woken, the zombie meets two guards, whichever comes first: its heartbeat finds the
        # lease lost and interrupts the load (it says so as the lost lease, or, when the load had
        # begun, as the interrupted target work that rolled back: seen on a busy machine), or the
        # target's fence refuses it. Either way `unchanged` below checks it wrote nothing.
        problems.append(f"the zombie was stopped by neither its heartbeat nor the fence: {said}")
    unchanged = before == after if point == "before_target_txn" else None
    if unchanged is False:
        problems.append("the zombie changed the target, ledger or stage after SIGCONT")
    detail = "; ".join(problems) or (
        f"{total} rows, each window exactly the newer source rows (+{ADDED} -{DELETED} in "
        "the frozen window), ledger COMPLETED with those counts"
    )
    return Fenced(point, stopped, code, said, unchanged, not problems, detail, True, side.name)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.fencing", description=__doc__)
    parser.add_argument("points", nargs="*", metavar="POINT", help=f"default: all of {POINTS}")
    parser.add_argument("--stack", choices=(*harness.STACKS, "all"), default="all")
    args = parser.parse_args(argv)
    chosen = chosen_points(args.points, POINTS)
    results = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as running:
        if args.stack in ("embedded", "all"):
            for point in chosen:
                root = Path(tmp) / point
                url = fresh_pg_url()
                try:
                    if point in LEDGER_POINTS:
                        results.append(fence(point, root, url))
                    else:
                        root.mkdir(parents=True)
                        results.append(supersede(point, EmbeddedSide(root, url), root / "z.log"))
                finally:
                    drop_pg(url)
        warehouse_points = [p for p in chosen if p in WAREHOUSE_POINTS]
        if args.stack in ("es-s3-snowflake", "all") and warehouse_points:
            warehouse = harness.Warehouse(Path(tmp), running)
            for point in warehouse_points:
                side = WarehouseSide(warehouse, point)
                results.append(supersede(point, side, Path(tmp) / f"{point}-warehouse.log"))
    return report(
        "fencing: SIGSTOP a worker past the stale threshold, take its window over, SIGCONT it",
        (
            "frozen at",
            "stack",
            "source changed",
            "zombie exit",
            "zombie",
            "wrote after SIGCONT",
            "result",
            "detail",
        ),
        [
            (
                r.point,
                r.stack,
                "yes" if r.source_changed else "no",
                str(r.zombie_exit),
                r.zombie,
                wrote(r),
                mark(r.ok),
                r.detail if r.stopped else f"never stopped; {r.detail}",
            )
            for r in results
        ],
        [r.ok for r in results],
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
