"""Registration: every window registered exactly once, whatever the config history or the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ledgerflow.blocks.config import load_final_config
from ledgerflow.flows.pipeline import load_parts, settings_from, windowed_pipeline
from ledgerflow.tasks.store_and_validate import register_windows
from ledgerflow.windows import window_containing, windows_between

from .kit import Pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")
LA = "America/Los_Angeles"


@pytest.fixture
def pipeline_any(tmp_path: Path, ledger_url: str) -> Pipeline:
    return Pipeline(tmp_path, rows=10, ledger_url=ledger_url)


async def test_unset_start_registers_the_latest_eligible_window_then_every_later_one(
    pipeline_any: Pipeline,
) -> None:
    name = await pipeline_any.save(start=None, end=None)
    state = await windowed_pipeline(config_block=name, return_state=True)
    assert state.is_completed(), state.message
    [first] = await pipeline_any.records()
    cutoff = datetime.now(UTC) - timedelta(days=1)
    assert first.window_end_time <= cutoff
    assert window_containing(first.window_end_time, LA, "2h").end > cutoff - timedelta(minutes=5)
    assert first.pipeline_status == "COMPLETED"

    # Later runs register every window after it, with no gap, up to their own cutoff.
    config = await load_final_config(name)
    parts, settings = await load_parts(config), settings_from(config)
    later = first.window_end_time + timedelta(days=1, hours=5)
    await register_windows.fn(parts, settings, at=later)
    rows = await pipeline_any.records()
    expected = windows_between(first.window_start_time, later - timedelta(days=1), LA, "2h")
    assert [(r.window_start_time, r.window_end_time) for r in rows] == [
        (w.start, w.end) for w in expected if w.end <= later - timedelta(days=1)
    ]
