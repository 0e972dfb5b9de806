"""A config change: `start` moved earlier after the first run. The README calls `start` the
first instant to load; the earlier windows are never registered, the run ends Completed and
status reports no gap (they lie before the first registered window)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from ledgerflow.demo import DEMO_START

from tests.integration.kit import Pipeline

from .helpers import cli, ids, run

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_moving_start_earlier_loads_the_earlier_windows_or_says_so(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, rows=500)
    lo, mid, hi = DEMO_START, DEMO_START + timedelta(hours=2), DEMO_START + timedelta(hours=4)
    name = asyncio.run(pipeline.save(start=mid, end=hi))
    assert run(name).is_completed()
    asyncio.run(pipeline.save(start=lo, end=hi))  # the operator wants the first window too
    state = run(name)
    status = cli("status", "-c", name)
    loaded = ids(pipeline.warehouse, lo, mid)
    said = (not state.is_completed()) or bool(status.get("faults") or status.get("gaps"))
    assert loaded == ids(pipeline.source_path, lo, mid) or said, (
        f"start moved to {lo.isoformat()}: the run ended {state.message!r}, status lists no "
        f"gap ({ {k: status[k] for k in status if k in ('faults', 'gaps', 'counts')} }), and "
        f"[{lo.isoformat()}, {mid.isoformat()}) holds {len(loaded)} of "
        f"{len(ids(pipeline.source_path, lo, mid))} rows"
    )
