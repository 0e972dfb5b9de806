"""The seed's Pre-Validation Count Check: skip a window whose target already matches the source.

A window an operator reloads (`ledgerflow reload`) is transferred even when the counts match, and
so is a window whose previous holder was inside its load when it lost the lease: that worker may
still commit (its transaction holds the target's fence row), and equal counts would then hide rows
of an older source. Loading again goes through the fence, which waits for that commit (or conflicts
and retries) and then replaces it.

Rule for empty windows: a window with no source rows and no target rows is COMPLETED with its
transfer phases SKIPPED (there is nothing to move). A window with no source rows but some target
rows is *not* skipped: it is replaced, so the target ends up empty like the source.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.client.schemas.objects import State
from prefect.states import Completed

from ledgerflow.compat import uncached
from ledgerflow.ledger import Lease, PhaseStatus
from ledgerflow.ports import Systems
from ledgerflow.tasks.common import RunSettings, timed


@dataclass(frozen=True)
class Counts:
    source: int
    target: int
    skipped: bool


@task(name="pre_validation_count_check", persist_result=False, **uncached())
async def pre_validation_count_check(
    systems: Systems, settings: RunSettings, lease: Lease
) -> State[Any]:
    """Count both sides. Equal counts complete the window here and skip the transfer."""
    async with timed("pre-validation count check", lease), systems.ledger.open() as ledger:
        source, target = await asyncio.gather(
            systems.source.count(lease.window),
            systems.target.count(lease.window, lease.record.pipeline_id),
        )
        interrupted = lease.record.stage_to_target_ingestion_status == PhaseStatus.IN_PROGRESS
        if source != target or lease.record.force_reload or interrupted:
            await ledger.record_counts(lease, source, target)
            if source != target:
                why = f"source {source} != target {target}"
            else:
                why = "forced reload" if lease.record.force_reload else "a previous load may commit"
            return Completed(message=f"{why}: transfer", data=Counts(source, target, False))
        await ledger.skip_transfer(lease, source, target)
    return Completed(
        message=f"skipped: source and target both hold {source} row(s)",
        data=Counts(source, target, True),
    )
