"""A retile replaces PENDING windows with fresh rows whose fence starts again at 0, and the fence
row in the target is keyed by window start only: a worker frozen before its target transaction,
whose window was released and re-tiled away, wakes and commits stale rows over the new load."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ledgerflow.blocks.config import load_final_config
from ledgerflow.demo import DEMO_START
from ledgerflow.errors import LedgerflowError
from ledgerflow.ledger import Ledger, Status
from ledgerflow.ports import Fence
from ledgerflow.tasks.store_and_validate import register_windows
from ledgerflow.windows import stage_location
from ledgerflow.wiring import load_systems, settings_from

from tests.integration.kit import Pipeline

from .helpers import cli, ids, run

pytestmark = pytest.mark.usefixtures("prefect_harness")

T0 = DEMO_START
HI = DEMO_START + timedelta(hours=2)


@pytest.mark.parametrize("held", ["first", "second"])
def test_a_worker_frozen_across_a_retile_writes_nothing(
    tmp_path: Path, ledger_url: str, held: str
) -> None:
    pipeline = Pipeline(tmp_path, rows=600, ledger_url=ledger_url)
    name = asyncio.run(pipeline.save(granularity="1h", end=HI))

    async def zombie_stages() -> tuple[object, object, object]:
        config = await load_final_config(name)
        systems = await load_systems(config)
        await register_windows.fn(systems, settings_from(config))  # [T0, T0+1h), [T0+1h, T0+2h)
        async with systems.ledger.open() as ledger:
            lease = await ledger.claim(
                name, "zombie", lag=config.lag, newest_first=held == "second"
            )
        assert lease is not None and lease.fence == 1
        # The zombie stages its window, reaches its target transaction, and freezes there.
        manifest = await systems.stage.write(
            stage_location(name, lease.window),
            systems.source.extract(lease.window),
            name_prefix=f"part-{lease.token[:8]}",
        )
        return lease, manifest, systems.target

    lease, manifest, target = asyncio.run(zombie_stages())
    window = lease.window  # type: ignore[attr-defined]
    # Meanwhile: documents arrive late in its window, its lock goes stale and is released.
    pipeline.add_late_rows(window.start + timedelta(minutes=3), 5)

    async def release() -> None:
        async with Ledger.from_url(pipeline.ledger_url) as ledger:
            later = datetime.now(UTC) + timedelta(hours=3)
            [gone] = await ledger.release_stale(
                name, older_than=timedelta(hours=2), max_attempts=3, now=later
            )
            assert gone.pipeline_status == Status.PENDING

    asyncio.run(release())
    # The operator moves to 2h windows from T0 (a boundary of both grids) and the run loads.
    asyncio.run(pipeline.save(granularity="2h", end=HI))
    cli("retile", "-c", name, "--at", T0.isoformat())
    assert run(name).is_completed()
    assert ids(pipeline.warehouse, T0, HI) == ids(pipeline.source_path, T0, HI)

    if held == "first":
        # Same window start as the new 2h window. "Every claim of a window carries a number
        # greater than every earlier claim's": the re-registered row started again at 0.
        [new] = asyncio.run(pipeline.records())
        assert new.fence_token > lease.fence, (  # type: ignore[attr-defined]
            f"the re-tiled window's claim carries fence {new.fence_token}, not above the "
            f"superseded claim's {lease.fence}: the target's fence lets the zombie through"  # type: ignore[attr-defined]
        )

    # The zombie wakes inside replace(): its claim was superseded, so it must write nothing.
    async def wake() -> None:
        fence = Fence(name, window.start, lease.fence)  # type: ignore[attr-defined]
        try:
            await target.replace(window, manifest, fence)  # type: ignore[attr-defined]
        except LedgerflowError as exc:
            print("zombie refused:", exc)  # (first: its files were cleared by the new load)

    asyncio.run(wake())
    assert ids(pipeline.warehouse, T0, HI) == ids(pipeline.source_path, T0, HI), (
        "the superseded worker's stale rows replaced the newer load of its span"
    )
