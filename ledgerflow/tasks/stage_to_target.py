"""The seed's Stage to Target Transfer: replace the window in the target, atomically."""

from __future__ import annotations

from prefect import task

from ledgerflow import failpoints
from ledgerflow.ledger import Lease, Phase, PhaseStatus
from ledgerflow.ports import Fence, Manifest
from ledgerflow.tasks.common import Parts, RunSettings, heartbeat, now, timed


@task(name="stage_to_target", persist_result=False)
async def stage_to_target(
    parts: Parts, settings: RunSettings, lease: Lease, manifest: Manifest
) -> int:
    """Delete the window's rows and load the staged files in one target transaction, fenced by
    the claim's number: a worker whose lease a newer claim superseded loads nothing."""
    async with timed("stage to target", lease), parts.ledger.open() as ledger:
        await ledger.update(
            lease,
            "stage-to-target start",
            {
                "stage_to_target_ingestion_status": PhaseStatus.IN_PROGRESS,
                "stage_to_target_ingestion_start_time": now(),
            },
        )
        async with heartbeat(
            ledger, lease, settings.heartbeat_every, give_up_after=settings.ledger_silence_limit
        ):
            fence = Fence(lease.record.pipeline_id, lease.window.start, lease.fence)
            loaded = await parts.target.replace(lease.window, manifest, fence)
        failpoints.hit("after_load_before_ledger")
        await ledger.update(
            lease,
            "stage-to-target done",
            {
                "loaded_count": loaded,
                "stage_to_target_ingestion_status": PhaseStatus.COMPLETED,
                "stage_to_target_ingestion_end_time": now(),
                "phase_completed": Phase.STAGE_TO_TARGET,
            },
        )
    return loaded
