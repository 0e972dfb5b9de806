"""Crash injection: SIGKILL the pipeline at named points, recover, and check every window.

`python -m tests.chaos.harness [--stack embedded|es-s3-snowflake|all] [POINT ...]` (what
`make chaos` runs) prints a table of injection point x stack. The stacks: the embedded defaults
(DuckDB source, local stage, DuckDB target, SQLite ledger), and Elasticsearch (osmem-server) ->
S3 (moto server) -> Snowflake (fakesnow server). For each point and stack, on a fresh pipeline:

1. a flow run in a child process is killed with SIGKILL at the point (ledgerflow.failpoints);
   for `mid_load` every window is loaded once first and reopened, so the killed transaction has
   really deleted rows;
2. the normal recovery runs: two more scheduled runs (the first releases the stale lock in its
   end-of-run cleanup, the second loads what is left);
3. every window must be COMPLETED with target rows == source count, no id twice, and nothing
   left IN_PROGRESS.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from ledgerflow.compat import ephemeral_environment  # imports no Prefect

# The child runs share one Prefect API database with this process; set before Prefect loads.
_HOME = Path(tempfile.mkdtemp(prefix="ledgerflow-chaos-"))
os.environ.setdefault("PREFECT_HOME", str(_HOME / "prefect"))
os.environ.setdefault(
    "PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{_HOME / 'prefect.db'}"
)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.pop("PREFECT_API_URL", None)
# On Prefect 3 every process here starts its ephemeral API as a server process of its own, which
# must answer within 20 s by default: too short while several start at once on a loaded machine
# (`make chaos PREFECT=3` failed so at its first save). Its telemetry heartbeat races the
# migration of a fresh database. The same defaults as ledgerflow.compat.ephemeral_start, given
# to the children through the environment; Prefect 2 reads neither.
for _name, _value in ephemeral_environment().items():
    os.environ.setdefault(_name, _value)
# The first process on the fresh database migrates it. Inside Prefect 2's in-process API start
# that has 30 s, hard-coded (LifespanManager(startup_timeout=30)), which a machine busy with other
# test runs overran (TimeoutError at the harness's first block save). As a `ledgerflow` command
# does: migrate first, with no limit, under the home's lock, then start the API.
from ledgerflow.prefect_home import start_ephemeral_api  # noqa: E402

start_ephemeral_api()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, timedelta  # noqa: E402
from typing import Any  # noqa: E402

from ledgerflow.demo import DEMO_START  # noqa: E402
from ledgerflow.failpoints import POINTS  # noqa: E402
from ledgerflow.ledger import Ledger, PipelineRecord  # noqa: E402

from tests.chaos.report import chosen_points, mark, report  # noqa: E402
from tests.integration.kit import Pipeline  # noqa: E402

RUN = (
    "import asyncio, sys\n"
    "from ledgerflow.flows.pipeline import windowed_pipeline\n"
    "state = asyncio.run(windowed_pipeline(config_block=sys.argv[1], return_state=True))\n"
    "sys.exit(0 if state.is_completed() else 3)\n"
)


CRASH_CONFIG: dict[str, Any] = {
    "end": DEMO_START + timedelta(hours=8),
    "concurrency": 1,
    "max_retry_task": 0,
    "max_window_attempts": 5,
    "stale_threshold_hours": 0.0005,  # 1.8 s: a dead worker's lock goes stale quickly
}


@dataclass(frozen=True)
class Outcome:
    point: str
    stack: str
    killed: bool
    ok: bool
    detail: str


def run_flow(name: str, failpoint: str | None) -> int:
    """Run the flow in a worker process; its exit code (-9: killed at the failpoint).

    The worker runs in a session of its own, and whatever it started dies with it, as on a
    worker host that dies: on Prefect 3 a worker's ephemeral API is a server process of its
    own, which a SIGKILLed worker leaves behind (Prefect stops it at the worker's exit). Left,
    it would keep serving over the shared Prefect database. (The output is not kept: such a
    server holds the worker's output pipes open, so reading them would wait for it.)"""
    env = {k: v for k, v in os.environ.items() if k != "LEDGERFLOW_FAILPOINT"}
    if failpoint:
        env["LEDGERFLOW_FAILPOINT"] = failpoint
    worker = subprocess.Popen(
        [sys.executable, "-c", RUN, name],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return worker.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def verdict(problems: list[str], summary: str) -> tuple[bool, str]:
    return not problems, "; ".join(problems) or summary


def ledger_problems(records: list[PipelineRecord]) -> list[str]:
    problems = []
    stuck = [r.id for r in records if r.pipeline_status == "IN_PROGRESS"]
    if stuck:
        problems.append(f"IN_PROGRESS: {stuck}")
    not_done = [(r.id, r.pipeline_status) for r in records if r.pipeline_status != "COMPLETED"]
    if not_done:
        problems.append(f"not COMPLETED: {not_done}")
    return problems


class Embedded:
    """DuckDB source, local stage, DuckDB target, SQLite ledger: the embedded defaults."""

    name = "embedded"

    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self, point: str) -> tuple[Pipeline, Callable[[], tuple[bool, str]]]:
        pipeline = Pipeline(self.root / f"embedded-{point}", rows=2000)
        asyncio.run(pipeline.save(**CRASH_CONFIG))
        return pipeline, lambda: self.check(pipeline)

    def after_kill(self) -> str:
        return ""  # DuckDB rolls back a dead process's transaction when the file is next opened

    def check(self, pipeline: Pipeline) -> tuple[bool, str]:
        records = asyncio.run(pipeline.records())
        problems = ledger_problems(records)
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
        return verdict(problems, f"{len(records)} windows, {total} rows, exact")


class Warehouse:
    """Elasticsearch (osmem-server) -> S3 (moto server) -> Snowflake (fakesnow server).

    The servers run in (or under) this process; the killed flow runs reach them over HTTP.
    """

    name = "es-s3-snowflake"
    DOCS = 2400  # three per timestamp, 15 s apart: the first two of the four 2-hour windows

    def __init__(self, root: Path, stack: contextlib.ExitStack) -> None:
        from osmem_server import OsmemServer

        from tests.integration.warehouse_kit import local_peers

        self.root = root
        self.es_url = stack.enter_context(OsmemServer.start()).url
        self.peers = stack.enter_context(local_peers())

    def prepare(self, point: str) -> tuple[Pipeline, Callable[[], tuple[bool, str]]]:
        from ledgerflow.blocks.elasticsearch import ElasticsearchSource

        index = f"events-{point.replace('_', '-')}"
        asyncio.run(self._seed(index))
        bucket = self.peers.new_bucket()
        database = f"LF_{uuid.uuid4().hex[:8].upper()}"
        self.index, self.database = index, database  # the last prepared, for the fencing rows
        pipeline = Pipeline(self.root / f"warehouse-{point}", rows=10)
        name = pipeline.name
        source = ElasticsearchSource.parse_obj(
            {"hosts": [self.es_url], "index": index, "compatibility_headers": False}
        )
        target = self.peers.target(bucket, database)

        async def save() -> None:
            await source.save(name)
            await self.peers.stage(bucket).save(name)
            await target.save(name)
            await pipeline.save(
                source_block=f"ledgerflow-elasticsearch-source/{name}",
                stage_block=f"ledgerflow-s3-stage/{name}",
                target_block=f"ledgerflow-snowflake-target/{name}",
                **CRASH_CONFIG,
            )

        asyncio.run(save())
        return pipeline, lambda: self.check(pipeline, source, database)

    async def _seed(self, index: str) -> None:
        from elasticsearch import AsyncElasticsearch
        from ledgerflow.blocks.elasticsearch import PlainJsonNode

        first = DEMO_START.astimezone(UTC)
        es = AsyncElasticsearch(self.es_url, node_class=PlainJsonNode)
        try:
            await es.indices.create(
                index=index, mappings={"properties": {"@timestamp": {"type": "date"}}}
            )
            ops: list[dict[str, object]] = []
            for i in range(self.DOCS):
                at = first + timedelta(seconds=(i // 3) * 15)  # three documents per timestamp
                stamp = at.isoformat().replace("+00:00", "Z")
                ops += [{"index": {"_index": index, "_id": f"d{i}"}}, {"@timestamp": stamp, "n": i}]
            await es.bulk(operations=ops, refresh=True)
        finally:
            await es.close()

    def after_kill(self) -> str:
        """What Snowflake does to a dead client's open transaction, which fakesnow never does.

        In Snowflake the transaction of a killed worker stays open, holding the table's lock,
        until it is idle for 4 hours or someone runs SYSTEM$ABORT_TRANSACTION (the target's
        lock timeout and error say so). fakesnow keeps it open forever; abort it here.
        """
        import fakesnow.server as fakesnow_app

        detached = [c for c in fakesnow_app.sessions.values() if c._in_transaction]
        for connection in detached:
            connection.rollback()
        return f" (+ {len(detached)} detached transaction aborted)" if detached else ""

    def check(self, pipeline: Pipeline, source: Any, database: str) -> tuple[bool, str]:
        records = asyncio.run(pipeline.records())
        problems = ledger_problems(records)
        with contextlib.closing(self.peers.sql_connection(database)) as conn:
            cur = conn.cursor()
            for r in records:
                expected = asyncio.run(source.count(r.window))
                cur.execute(
                    "SELECT COUNT(*) FROM EVENTS WHERE TS >= %s AND TS < %s",
                    (r.window_start_time, r.window_end_time),
                )
                loaded = cur.fetchone()[0]
                if expected != loaded:
                    problems.append(f"window {r.id}: source {expected} != target {loaded}")
            cur.execute("SELECT COUNT(*), COUNT(DISTINCT _ID) FROM EVENTS")
            total, distinct = cur.fetchone()
        if total != distinct:
            problems.append(f"{total - distinct} duplicate _id")
        return verdict(problems, f"{len(records)} windows, {total} rows, exact")


def reload_all(pipeline: Pipeline) -> None:
    """An operator's forced reload of every window: the next load DELETEs rows that exist."""

    async def reopen() -> None:
        async with Ledger.from_url(pipeline.ledger_url) as ledger:
            ids = [r.id for r in await ledger.windows(pipeline.name)]
            await ledger.reopen(pipeline.name, ids, "chaos: reload", force=True)

    asyncio.run(reopen())


def inject(stack: Embedded | Warehouse, point: str) -> Outcome:
    pipeline, check = stack.prepare(point)
    name = pipeline.name
    if point == "mid_load":
        # Load everything once first, so the killed transaction has really deleted rows.
        run_flow(name, None)
        reload_all(pipeline)
    code = run_flow(name, point)
    killed = code == -9
    aborted = stack.after_kill()
    time.sleep(2.5)  # past the stale threshold
    for _ in range(2):  # the normal recovery: the next scheduled runs
        run_flow(name, None)
    ok, detail = check()
    detail += aborted
    if not killed:
        ok, detail = False, f"the run was not killed at {point} (exit {code}); {detail}"
    return Outcome(point, stack.name, killed, ok, detail)


STACKS = ("embedded", "es-s3-snowflake")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.harness", description=__doc__)
    parser.add_argument("points", nargs="*", metavar="POINT", help=f"default: all of {POINTS}")
    parser.add_argument("--stack", choices=(*STACKS, "all"), default="all")
    args = parser.parse_args(argv)
    chosen = chosen_points(args.points, POINTS)
    stacks = STACKS if args.stack == "all" else (args.stack,)
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as running:
        for stack_name in stacks:
            stack = (
                Embedded(Path(tmp)) if stack_name == "embedded" else Warehouse(Path(tmp), running)
            )
            for point in chosen:
                outcomes.append(inject(stack, point))
    return report(
        "crash injection: SIGKILL at each point, then recovery",
        ("injection point", "stack", "killed", "result", "detail"),
        [(o.point, o.stack, "yes" if o.killed else "no", mark(o.ok), o.detail) for o in outcomes],
        [o.ok for o in outcomes],
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
