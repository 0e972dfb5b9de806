"""Orchestration cost per window: the flow on empty windows vs the same work without Prefect.

Empty windows cost a claim and a count check each; everything else is Prefect's overhead. The
target (issue 3) is at most 0.3 s per window amortized at concurrency 8 in ephemeral mode.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import duckdb

from bench.common import median, show

WINDOWS = 64
CONCURRENCY = 8
START = datetime(2025, 1, 1, tzinfo=UTC)


def _empty_source(root: Path) -> Path:
    path = root / "empty.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE events (event_id VARCHAR, ts TIMESTAMPTZ)")
    con.close()
    return path


async def _save_blocks(root: Path, name: str) -> None:
    from ledgerflow.blocks.config import validate_config
    from ledgerflow.blocks.duckdb_source import DuckDBSource
    from ledgerflow.blocks.duckdb_target import DuckDBTarget
    from ledgerflow.blocks.ledger_db import LedgerDatabase
    from ledgerflow.blocks.local_stage import LocalStage
    from ledgerflow.compat import model_validate

    blocks = [
        model_validate(LedgerDatabase, {"url": f"sqlite+aiosqlite:///{root / name}.db"}),
        model_validate(DuckDBSource, {"path": str(root / "empty.duckdb"), "table": "events"}),
        model_validate(LocalStage, {"root": str(root / "stage")}),
        model_validate(DuckDBTarget, {"path": str(root / f"{name}.duckdb"), "table": "events"}),
    ]
    for block in blocks:
        await block.save(name)
    await validate_config(
        {
            "pipeline_id": name,
            "timezone": "UTC",
            "granularity": "1h",
            "start": START,
            "end": START + timedelta(hours=WINDOWS),
            "windows_per_run": WINDOWS,
            "concurrency": CONCURRENCY,
            "ledger_block": f"ledgerflow-ledger-database/{name}",
            "source_block": f"ledgerflow-duckdb-source/{name}",
            "stage_block": f"ledgerflow-local-stage/{name}",
            "target_block": f"ledgerflow-duckdb-target/{name}",
        }
    ).save(name)


async def _with_prefect(root: Path) -> float:
    from ledgerflow.flows.pipeline import windowed_pipeline

    name = f"b{uuid.uuid4().hex[:8]}"
    await _save_blocks(root, name)
    started = time.perf_counter()
    state = await windowed_pipeline(config_block=name, return_state=True)
    elapsed = time.perf_counter() - started
    assert state.is_completed() and (state.message or "").startswith(f"{WINDOWS} window(s)"), (
        state.message
    )
    return elapsed


async def _without_prefect(root: Path) -> float:
    """The same ledger and block calls the tasks make, in plain asyncio."""
    from ledgerflow.blocks.config import load_final_config
    from ledgerflow.ledger import Lease
    from ledgerflow.tasks.cleanup_stale_locks import cleanup_stale_locks
    from ledgerflow.tasks.pre_validation_count_check import pre_validation_count_check
    from ledgerflow.tasks.store_and_validate import claim_window, register_windows
    from ledgerflow.wiring import load_systems, settings_from

    name = f"b{uuid.uuid4().hex[:8]}"
    await _save_blocks(root, name)
    started = time.perf_counter()
    config = await load_final_config(name)
    systems = await load_systems(config)
    settings = settings_from(config)
    await register_windows.fn(systems, settings)

    async def worker() -> int:
        done = 0
        # .fn returns the task's own State: its data is the lease itself, or None.
        while (claimed := (await claim_window.fn(systems, settings, "bench")).data) is not None:
            lease = cast(Lease, claimed)
            await pre_validation_count_check.fn(systems, settings, lease)
            done += 1
        return done

    done = sum(await asyncio.gather(*(worker() for _ in range(CONCURRENCY))))
    await cleanup_stale_locks.fn(systems, settings)
    elapsed = time.perf_counter() - started
    assert done == WINDOWS, done
    return elapsed


def measure(repeat: int = 3) -> tuple[list[float], list[float]]:
    """Seconds per run of `repeat` plain-asyncio runs and `repeat` flow runs, after a warm-up."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
    from ledgerflow.compat import prefect_test_harness

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness():
        root = Path(tmp)
        _empty_source(root)
        asyncio.run(_with_prefect(root))  # warm-up: first flow run registers block types
        plain = [asyncio.run(_without_prefect(root)) for _ in range(repeat)]
        flows = [asyncio.run(_with_prefect(root)) for _ in range(repeat)]
    return plain, flows


def main(repeat: int = 3) -> None:
    plain, flows = measure(repeat)
    per_flow, per_plain = median(flows) / WINDOWS, median(plain) / WINDOWS
    show(
        f"orchestration: {WINDOWS} empty windows at concurrency {CONCURRENCY}, median of {repeat}",
        ["contender", "run (s)", "per window (s)", "ratio", "target"],
        [
            ["plain asyncio (same calls)", median(plain), per_plain, 1.0, ""],
            [
                "ledgerflow flow (Prefect)",
                median(flows),
                per_flow,
                per_flow / per_plain,
                "<= 0.300 s/window",
            ],
        ],
    )
    verdict = "meets" if per_flow <= 0.3 else "MISSES"
    print(f"orchestration {verdict} the target: {per_flow:.3f} s per window amortized")
