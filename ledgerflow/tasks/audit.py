"""The seed's Audit Task: recount both sides after the load, with two kinds of failure.

- The audit process fails (a count query errors): the task retries; once retries are used up
  the flow marks the window FAILED with the error.
- The counts disagree beyond the tolerance: an integrity failure. The window is FAILED with
  audit_result FAIL and `AuditMismatch` (terminal, never retried) fails the flow run.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from prefect import task

from ledgerflow.errors import AuditMismatch
from ledgerflow.ledger import Lease, Phase, PhaseStatus
from ledgerflow.tasks.common import Parts, RunSettings, now, timed


def percentage_difference(source: int, target: int) -> Decimal:
    """|source - target| as a percentage of source; 100% when source is empty but target is not."""
    if source == 0:
        return Decimal(0) if target == 0 else Decimal(100)
    return (Decimal(abs(source - target)) * 100 / Decimal(source)).quantize(Decimal("0.01"))


@task(name="audit", persist_result=False)
async def audit(parts: Parts, settings: RunSettings, lease: Lease) -> dict[str, object]:
    """Recount, record the audit columns, and complete or fail the window."""
    async with timed("audit", lease), parts.ledger.open() as ledger:
        started = now()
        source, target = await asyncio.gather(
            parts.source.count(lease.window), parts.target.count(lease.window)
        )
        pct = percentage_difference(source, target)
        passed = pct <= Decimal(str(settings.audit_tolerance_percent))
        values: dict[str, object] = {
            "audit_start_time": started,
            "audit_end_time": now(),
            "audit_status": PhaseStatus.COMPLETED,
            "audit_result": "PASS" if passed else "FAIL",
            "source_count": source,
            "target_count": target,
            "count_difference": source - target,
            "percentage_difference": pct,
            "phase_completed": Phase.AUDIT,
        }
        if not passed:
            error = AuditMismatch(source, target, float(pct), settings.audit_tolerance_percent)
            await ledger.fail(lease, str(error), values)
            raise error
        await ledger.complete(lease, values)
    return values
