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
from prefect.artifacts import create_markdown_artifact

from ledgerflow import failpoints
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
        failpoints.hit("mid_audit")
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
            await explain_mismatch(settings, lease, error)
            raise error
        await ledger.complete(lease, values)
    return values


async def explain_mismatch(settings: RunSettings, lease: Lease, error: AuditMismatch) -> None:
    """A markdown artifact that tells the person on call what the mismatch means and what to do."""
    window = lease.window
    lo, hi = window.local(settings.timezone)
    more = "more" if error.target_count > error.source_count else "fewer"
    await create_markdown_artifact(  # type: ignore[misc]
        key=f"ledgerflow-audit-{settings.pipeline_id.lower().replace('_', '-')}"[:100],
        description=f"audit mismatch in {settings.pipeline_id}",
        markdown="\n".join(
            [
                f"# Audit mismatch: `{settings.pipeline_id}`",
                "",
                "| | |",
                "|---|---|",
                f"| window (UTC) | {window.to_dict()['start']} - {window.to_dict()['end']} |",
                f"| window ({settings.timezone}) | {lo:%Y-%m-%d %H:%M %Z} - {hi:%H:%M %Z} |",
                f"| ledger id | {lease.id} |",
                f"| source rows | {error.source_count:,} |",
                f"| target rows | {error.target_count:,} |",
                f"| difference | {error.source_count - error.target_count:+,} "
                f"({error.percentage_difference:.2f}%, tolerance {error.tolerance:.2f}%) |",
                "",
                f"The target holds {more} rows than the source for this window after the load, "
                "so the window is FAILED and was not retried. Usual causes: a concurrent writer "
                "or delete on the target table, documents changing in the source during the "
                "load (raise x_time_back), or a filter that differs between count and extract.",
                "",
                "Reload it once the cause is fixed: "
                f"`ledgerflow retry -c <config> --id {lease.id}`.",
            ]
        ),
    )
