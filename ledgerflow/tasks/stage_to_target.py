"""The seed's Stage to Target Transfer: replace the window in the target, atomically."""

from __future__ import annotations

from prefect import task

from ledgerflow import failpoints
from ledgerflow.compat import uncached
from ledgerflow.ledger import Lease, Phase
from ledgerflow.ports import Fence, Manifest, Systems
from ledgerflow.tasks.common import RunSettings, heartbeat, timed


@task(name="stage_to_target", persist_result=False, **uncached())
async def stage_to_target(
    systems: Systems, settings: RunSettings, lease: Lease, manifest: Manifest
) -> int:
    """Delete the window's rows and load the staged files in one target transaction, fenced by
    the claim's number: a worker whose lease a newer claim superseded loads nothing."""
    async with timed("stage to target", lease), systems.ledger.open() as ledger:
        await ledger.start_phase(lease, Phase.STAGE_TO_TARGET)
        async with heartbeat(
            ledger, lease, settings.heartbeat_every, give_up_after=settings.ledger_silence_limit
        ):
            fence = Fence(lease.record.pipeline_id, lease.window.start, lease.fence)
            loaded = await systems.target.replace(lease.window, manifest, fence)
        failpoints.hit("after_load_before_ledger")
        await ledger.finish_phase(lease, Phase.STAGE_TO_TARGET, rows=loaded)
    return loaded
