"""Racing worker processes: K processes drain one Postgres ledger, one source and one target.

`python -m tests.chaos.racing [K] [GRANULARITY]` registers every window of the demo's two days
(5-minute windows: 564 of them), starts K worker processes that claim and process windows until
none is left (the pipeline's own tasks, called directly), then checks that every window was
loaded exactly once and never processed by two workers at the same time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.chaos.report import mark, report
from tests.pgkit import admin_dsn, asyncpg_url, create_database, drop_database

WORKER = "tests.chaos.racing"


def blocks(spec: dict[str, str]) -> tuple[Any, Any]:
    from ledgerflow.blocks.config import validate_config
    from ledgerflow.blocks.duckdb_source import DuckDBSource
    from ledgerflow.blocks.duckdb_target import DuckDBTarget
    from ledgerflow.blocks.ledger_db import LedgerDatabase
    from ledgerflow.blocks.local_stage import LocalStage
    from ledgerflow.wiring import settings_from, wire

    config = validate_config(json.loads(spec["config"]))
    systems = wire(
        ledger=LedgerDatabase.parse_obj({"url": spec["ledger"], "auto_create_schema": False}),
        source=DuckDBSource.parse_obj({"path": spec["source"], "table": "web_events"}),
        stage=LocalStage.parse_obj({"root": spec["stage"]}),
        target=DuckDBTarget.parse_obj({"path": spec["warehouse"], "table": "web_events"}),
    )
    return settings_from(config), systems


async def work(spec: dict[str, str], log: Path) -> None:
    """One worker: claim, process, repeat; log each window's processing interval."""
    from ledgerflow.tasks.audit import audit
    from ledgerflow.tasks.pre_validation_count_check import pre_validation_count_check
    from ledgerflow.tasks.source_to_stage import source_to_stage
    from ledgerflow.tasks.stage_to_target import stage_to_target
    from ledgerflow.tasks.store_and_validate import claim_window

    settings, systems = blocks(spec)
    me = f"worker-{os.getpid()}"
    with log.open("a") as out:
        while (lease := (await claim_window.fn(systems, settings, me)).data) is not None:
            began = time.time()
            counts = (await pre_validation_count_check.fn(systems, settings, lease)).data
            if not counts.skipped:
                manifest = await source_to_stage.fn(systems, settings, lease, counts.source)
                await stage_to_target.fn(systems, settings, lease, manifest)
                await audit.fn(systems, settings, lease)
            out.write(
                json.dumps({"id": lease.id, "worker": me, "began": began, "ended": time.time()})
                + "\n"
            )
            out.flush()


def fresh_pg_url() -> str:
    """A new, empty Postgres database on the test server, as a ledger URL."""
    admin = admin_dsn()
    return asyncpg_url(admin, asyncio.run(create_database(admin, "lf_chaos")))


def drop_pg(url: str) -> None:
    asyncio.run(drop_database(admin_dsn(), url.rsplit("/", 1)[1].partition("?")[0]))


def main(k: int = 4, granularity: str = "5m") -> int:
    from ledgerflow.demo import DEMO_END, DEMO_START, generate_events
    from ledgerflow.ledger import Ledger
    from ledgerflow.windows import build_record, windows_between

    url = fresh_pg_url()
    root = Path(tempfile.mkdtemp(prefix="ledgerflow-race-"))
    generate_events(root / "source.duckdb", 20_000)
    config = {
        "pipeline_id": "race",
        "timezone": "America/Los_Angeles",
        "granularity": granularity,
        "source_block": "x-y/z",
        "stage_block": "x-y/z",
        "target_block": "x-y/z",
        "stale_threshold_hours": 1,
        "max_retry_task": 0,
    }
    spec = {
        "config": json.dumps(config),
        "ledger": url,
        "source": str(root / "source.duckdb"),
        "stage": str(root / "stage"),
        "warehouse": str(root / "warehouse.duckdb"),
    }

    async def register() -> int:
        async with Ledger.from_url(url) as ledger:
            await ledger.create_schema()
            windows = windows_between(DEMO_START, DEMO_END, "America/Los_Angeles", granularity)
            return await ledger.register(
                [build_record("race", w, "America/Los_Angeles") for w in windows]
            )

    registered = asyncio.run(register())
    log = root / "processed.jsonl"
    started = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-m", WORKER, "--work", json.dumps(spec), str(log)])
        for _ in range(k)
    ]
    codes = [p.wait(timeout=1800) for p in procs]
    elapsed = time.perf_counter() - started

    entries = [json.loads(line) for line in log.read_text().splitlines()]
    by_window: dict[int, list[dict[str, Any]]] = {}
    for e in entries:
        by_window.setdefault(e["id"], []).append(e)
    twice = {w: v for w, v in by_window.items() if len(v) > 1}
    workers = {e["worker"] for e in entries}

    async def ledger_counts() -> dict[str, int]:
        async with Ledger.from_url(url) as ledger:
            return (await ledger.summary("race")).counts

    counts = asyncio.run(ledger_counts())
    drop_pg(url)  # the race is over
    import duckdb

    con = duckdb.connect(str(root / "warehouse.duckdb"), read_only=True)
    total, distinct = con.execute(
        "SELECT count(*), count(DISTINCT event_id) FROM web_events"
    ).fetchone()  # type: ignore[misc]
    con.close()
    src = duckdb.connect(str(root / "source.duckdb"), read_only=True)
    expected = src.execute("SELECT count(ts) FROM web_events").fetchone()[0]  # type: ignore[index]
    src.close()
    ok = (
        codes == [0] * k
        and registered == len(by_window)
        and not twice
        and counts["COMPLETED"] == registered
        and total == distinct == expected
    )
    # the line the test in tests/chaos asserts on
    print(f"windows processed twice: {len(twice)}")
    code = report(
        f"racing: {k} worker processes over one Postgres ledger",
        (
            "windows",
            "seconds",
            "workers that took some",
            "processed twice",
            "ledger",
            "warehouse rows (distinct)",
            "source rows",
            "result",
        ),
        [
            (
                f"{registered} x {granularity}",
                f"{elapsed:.1f}",
                str(len(workers)),
                str(len(twice)),
                ", ".join(f"{s} {n}" for s, n in counts.items() if n),
                f"{total} ({distinct})",
                str(expected),
                mark(ok),
            )
        ],
        [ok],
    )
    shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--work":
        asyncio.run(work(json.loads(sys.argv[2]), Path(sys.argv[3])))
    else:
        args = sys.argv[1:]
        sys.exit(main(int(args[0]) if args else 4, args[1] if len(args) > 1 else "5m"))
