"""A claim that commits between `retarget`'s in-progress check and its commit (Postgres).

History (Postgres ledger, two workers and an operator, all through the public paths):

1. Pipeline `orders` loads into `web_events`; its first run registers two windows, both PENDING,
   and records the target `...#web_events`.
2. The operator renames the table in the target block to `web_events_v2` and runs
   `ledgerflow retarget -c <config>`.
3. While that retarget runs, a worker that loaded the config *before* the change (target
   `web_events`) claims a window. Its claim commits after retarget's "is any window IN_PROGRESS?"
   SELECT but before retarget's COMMIT: on Postgres (READ COMMITTED, and the claim touches no row
   retarget locked) nothing serialises the two. The worker then reads the recorded target, as
   `claim_window` does "after the claim committed", and still sees `web_events`: retarget has not
   committed yet. So the check passes, and the worker loads the window into the OLD table and
   marks it COMPLETED.
4. Retarget commits (`web_events_v2`, 0 windows reopened). The next run, with the new config,
   loads the other window into `web_events_v2` and ends Completed.

What goes wrong: every window is COMPLETED / PASS, the recorded and configured target is
`web_events_v2`, and `web_events_v2` lacks the rows of the window the stale worker loaded (they
are in `web_events`). Exactly what the promise rules out: "a worker that loaded the old config
before a retarget gives back what it claims", "the configured target holds every source row once
or the run/status say not".

The comments in `claim_window` ("one still running sees this window IN_PROGRESS and refuses")
and in `retarget` ("a window claimed meanwhile is seen here") hold only for a claim that commits
before retarget's SELECT. SQLite is not affected (the claim waits for retarget's write lock).

The interleaving is forced by running the stale worker's `claim_window` at the moment retarget
sends its final `UPDATE ledgerflow_pipelines SET target=...` (after its in-progress SELECT)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from ledgerflow.blocks.config import load_final_config
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.cli import app
from ledgerflow.compat import state_result
from ledgerflow.demo import DEMO_START
from ledgerflow.errors import ConfigError
from ledgerflow.flows.pipeline import windowed_pipeline
from ledgerflow.ledger import Status
from ledgerflow.ledger.models import PIPELINES
from ledgerflow.tasks.audit import audit
from ledgerflow.tasks.pre_validation_count_check import pre_validation_count_check
from ledgerflow.tasks.source_to_stage import source_to_stage
from ledgerflow.tasks.stage_to_target import stage_to_target
from ledgerflow.tasks.store_and_validate import claim_window, register_windows
from ledgerflow.wiring import load_systems, settings_from
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.integration.kit import Pipeline

from .helpers import ids, runner

pytestmark = pytest.mark.usefixtures("prefect_harness")

LO, MID = DEMO_START, DEMO_START + timedelta(hours=4)


async def test_a_claim_committing_inside_a_retarget_loads_into_the_old_table(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = Pipeline(tmp_path, rows=300, ledger_url=pg_url)
    name = await pipeline.save(end=MID)
    config = await load_final_config(name)
    settings = settings_from(config)
    old_target = DuckDBTarget.parse_obj({"path": str(pipeline.warehouse), "table": "web_events"})
    await register_windows.fn(await load_systems(config), settings)  # records web_events
    assert len(await pipeline.records()) == 2

    # The operator renames the table in the config...
    await DuckDBTarget.parse_obj({"path": str(pipeline.warehouse), "table": "web_events_v2"}).save(
        name, overwrite=True
    )

    # ...and retargets; a worker started with the old config claims while retarget runs, in
    # its own thread: it may wait for retarget (the fix) or commit at once (the bug).
    outcome: list[Any] = []
    real_execute = AsyncConnection.execute

    def stale_claim() -> None:
        async def go() -> Any:
            stale = replace(await load_systems(await load_final_config(name)), target=old_target)
            return await state_result(await claim_window.fn(stale, settings, "stale-worker"))

        try:
            outcome.append(asyncio.run(go()))
        except Exception as exc:  # the refusal is the expected outcome
            outcome.append(exc)

    worker = threading.Thread(target=stale_claim)

    async def execute(self: AsyncConnection, statement: Any, *args: Any, **kw: Any) -> Any:
        if (
            not worker.is_alive()
            and not outcome
            and isinstance(statement, sa.Update)
            and statement.table is PIPELINES
            and "SET target=" in str(statement)
        ):
            worker.start()
            await asyncio.to_thread(worker.join, 3)  # a claim that does not wait commits now
        return await real_execute(self, statement, *args, **kw)

    monkeypatch.setattr(AsyncConnection, "execute", execute)
    moved = await asyncio.to_thread(runner.invoke, app, ["retarget", "-c", name, "--json"])
    monkeypatch.undo()
    assert moved.exit_code == 0, moved.output
    await asyncio.to_thread(worker.join, 120)
    [lease] = outcome
    if not isinstance(lease, BaseException):
        assert lease is not None
        # The stale worker goes on with its window, into the table its config names.
        stale = replace(await load_systems(config), target=old_target)
        counts = await state_result(await pre_validation_count_check.fn(stale, settings, lease))
        manifest = await source_to_stage.fn(stale, settings, lease, counts.source)
        await stage_to_target.fn(stale, settings, lease, manifest)
        await audit.fn(stale, settings, lease)
    else:  # refused after the retarget committed: the window went back, nothing loaded
        assert isinstance(lease, ConfigError) and "web_events_v2" in str(lease), lease
        assert [r.pipeline_status for r in await pipeline.records()] == [Status.PENDING] * 2

    # The next run, with the new config.
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message

    records = await pipeline.records()
    all_completed = all(r.pipeline_status == Status.COMPLETED for r in records)
    v2 = ids(pipeline.warehouse, LO, MID, "web_events_v2")
    source = ids(pipeline.source_path, LO, MID)
    # The promise: the configured target holds every source row once, or the status says not.
    assert v2 == source or not all_completed, (
        f"every window COMPLETED, target recorded as web_events_v2, but web_events_v2 holds "
        f"{len(v2)} of the {len(source)} source rows; the stale worker's claim ended {lease!r} "
        f"and web_events holds {len(ids(pipeline.warehouse, LO, MID))} rows"
    )
