"""The seed's Pre-Validation Count Check: skip a window whose target already matches the source.

A window an operator reloads (`ledgerflow reload`) is transferred even when the counts match.

Rule for empty windows: a window with no source rows and no target rows is COMPLETED with its
transfer phases SKIPPED (there is nothing to move). A window with no source rows but some target
rows is *not* skipped: it is replaced, so the target ends up empty like the source.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.states import Completed, State

from ledgerflow.ledger import Lease, Phase, PhaseStatus
from ledgerflow.tasks.common import Parts, RunSettings, now, timed


@dataclass(frozen=True)
class Counts:
    source: int
    target: int
    skipped: bool


@task(name="pre_validation_count_check", persist_result=False)
async def pre_validation_count_check(
    parts: Parts, settings: RunSettings, lease: Lease
) -> State[Any]:
    """Count both sides. Equal counts complete the window here and skip the transfer."""
    async with timed("pre-validation count check", lease), parts.ledger.open() as ledger:
        source, target = await asyncio.gather(
            parts.source.count(lease.window), parts.target.count(lease.window)
        )
        counts = {"source_count": source, "target_count": target}
        if source != target or lease.record.force_reload:
            await ledger.update(
                lease, "pre-validation", {**counts, "phase_completed": Phase.PRE_VALIDATION}
            )
            why = "forced reload" if source == target else f"source {source} != target {target}"
            return Completed(message=f"{why}: transfer", data=Counts(source, target, False))
        stamp = now()
        await ledger.complete(
            lease,
            {
                **counts,
                "count_difference": 0,
                "percentage_difference": 0,
                "source_to_stage_ingestion_status": PhaseStatus.SKIPPED,
                "stage_to_target_ingestion_status": PhaseStatus.SKIPPED,
                "audit_status": PhaseStatus.SKIPPED,
                "audit_result": "MATCH",
                "audit_start_time": stamp,
                "audit_end_time": stamp,
                "phase_completed": Phase.PRE_VALIDATION,
            },
        )
    return Completed(
        message=f"skipped: source and target both hold {source} row(s)",
        data=Counts(source, target, True),
    )
