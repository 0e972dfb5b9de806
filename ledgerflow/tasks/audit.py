"""The seed's Audit Task: recount both sides after the load, with two kinds of failure.

- The audit process fails (a count query errors): the task retries; once retries are used up
  the flow marks the window FAILED with the error.
- The counts disagree beyond the tolerance: an integrity failure. The window is FAILED with
  audit_result FAIL and `AuditMismatch` (terminal, never retried) fails the flow run.
"""

from __future__ import annotations

import asyncio

from prefect import task

from ledgerflow import failpoints
from ledgerflow.clock import utc_now
from ledgerflow.compat import create_markdown_artifact, uncached
from ledgerflow.errors import AuditMismatch
from ledgerflow.ledger import Lease
from ledgerflow.ledger.audit import AuditVerdict, judge
from ledgerflow.ports import Systems
from ledgerflow.tasks.common import RunSettings, artifact_key, logger, timed


@task(name="audit", persist_result=False, **uncached())
async def audit(systems: Systems, settings: RunSettings, lease: Lease) -> AuditVerdict:
    """Recount, record the audit columns, and complete or fail the window."""
    async with timed("audit", lease), systems.ledger.open() as ledger:
        started = utc_now()
        source, target = await asyncio.gather(
            systems.source.count(lease.window),
            systems.target.count(lease.window, lease.record.pipeline_id),
        )
        failpoints.hit("mid_audit")
        verdict = judge(source, target, settings.audit_tolerance_percent)
        await ledger.finish_audit(lease, verdict, started=started)
        if not verdict.passed:
            error = verdict.mismatch()
            # The window is FAILED already; nothing after this may turn the mismatch into a
            # retry, so the explanation is best effort.
            try:
                await explain_mismatch(settings, lease, error)
            except Exception as exc:
                logger().warning("audit artifact for window id=%s not created: %s", lease.id, exc)
            raise error
    return verdict


async def explain_mismatch(settings: RunSettings, lease: Lease, error: AuditMismatch) -> None:
    """A markdown artifact that tells the person on call what the mismatch means and what to do."""
    window = lease.window
    lo, hi = window.local(settings.timezone)
    more = "more" if error.target_count > error.source_count else "fewer"
    await create_markdown_artifact(
        key=artifact_key(settings.pipeline_id, "audit"),
        description=f"audit mismatch in {settings.pipeline_id}",
        markdown="\n".join(
            [
                f"# Audit mismatch: `{settings.pipeline_id}`",
                "",
                "| | |",
                "|---|---|",
                f"| window (UTC) | {window.start_iso} - {window.end_iso} |",
                f"| window ({settings.timezone}) | {lo:%Y-%m-%d %H:%M %Z} - {hi:%H:%M %Z} |",
                f"| ledger id | {lease.id} |",
                f"| source rows | {error.source_count:,} |",
                f"| target rows | {error.target_count:,} |",
                f"| audit | {error.detail} |",
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
