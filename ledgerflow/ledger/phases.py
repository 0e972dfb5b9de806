"""A claimed window's progress: phases started and finished, pre-validation counts, the audit's
verdict. Each is one fenced write."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ledgerflow.ledger.audit import AuditVerdict
from ledgerflow.ledger.base import LedgerBase
from ledgerflow.ledger.leases import Lease
from ledgerflow.ledger.models import AuditResult, Phase, PhaseStatus, PipelineRecord
from ledgerflow.ledger.sql import _PHASE_ROWS, _phase_prefix, _stamp


class PhasesMixin(LedgerBase):
    async def start_phase(
        self, lease: Lease, phase: Phase, *, now: datetime | None = None
    ) -> PipelineRecord:
        """A transfer phase or the audit begins: its status IN_PROGRESS, its start stamped."""
        stamp = _stamp(self.dialect, now)
        prefix = _phase_prefix(phase)
        values = {f"{prefix}_status": PhaseStatus.IN_PROGRESS.value, f"{prefix}_start_time": stamp}
        return await self.update(lease, f"{phase.value} start", values, now=now)

    async def finish_phase(
        self,
        lease: Lease,
        phase: Phase,
        *,
        failed: bool = False,
        rows: int | None = None,
        manifest: str | None = None,
        now: datetime | None = None,
    ) -> PipelineRecord:
        """A transfer phase ended: COMPLETED (and recorded as the window's last phase, so a
        re-claimed window can resume after it) or FAILED. `rows` is what the phase moved
        (extracted_count for SOURCE_TO_STAGE, loaded_count for STAGE_TO_TARGET); `manifest` is
        the stage's manifest (SOURCE_TO_STAGE)."""
        stamp = _stamp(self.dialect, now)
        prefix = _phase_prefix(phase)
        status = PhaseStatus.FAILED if failed else PhaseStatus.COMPLETED
        values: dict[str, Any] = {f"{prefix}_status": status.value, f"{prefix}_end_time": stamp}
        if rows is not None:
            values[_PHASE_ROWS[phase]] = rows
        if manifest is not None:
            values["stage_manifest"] = manifest
        if not failed:
            values["phase_completed"] = phase.value
        return await self.update(lease, f"{phase.value} {status.value.lower()}", values, now=now)

    async def record_counts(
        self, lease: Lease, source: int, target: int, *, now: datetime | None = None
    ) -> PipelineRecord:
        """Pre-validation counted both sides and the window will be transferred."""
        values = {
            "source_count": source,
            "target_count": target,
            "phase_completed": Phase.PRE_VALIDATION.value,
        }
        return await self.update(lease, "pre-validation", values, now=now)

    async def skip_transfer(
        self, lease: Lease, source: int, target: int, *, now: datetime | None = None
    ) -> PipelineRecord:
        """Pre-validation found equal counts: complete the window with audit MATCH and its
        transfer phases SKIPPED."""
        stamp = _stamp(self.dialect, now)
        values = {
            "source_count": source,
            "target_count": target,
            "count_difference": source - target,
            "percentage_difference": 0,
            "audit_tolerance_percent": None,
            "source_to_stage_ingestion_status": PhaseStatus.SKIPPED.value,
            "stage_to_target_ingestion_status": PhaseStatus.SKIPPED.value,
            "audit_status": PhaseStatus.SKIPPED.value,
            "audit_result": AuditResult.MATCH.value,
            "audit_start_time": stamp,
            "audit_end_time": stamp,
            "phase_completed": Phase.PRE_VALIDATION.value,
        }
        return await self.complete(lease, values, now=now)

    async def finish_audit(
        self,
        lease: Lease,
        verdict: AuditVerdict,
        *,
        started: datetime,
        now: datetime | None = None,
    ) -> PipelineRecord:
        """Record the audit's recounts and verdict; complete the window when it passed, fail it
        (with the verdict's explanation as its error) when it did not."""
        stamp = _stamp(self.dialect, now)
        values = {
            "audit_start_time": started,
            "audit_end_time": stamp,
            "audit_status": PhaseStatus.COMPLETED.value,
            "audit_result": verdict.result.value,
            "source_count": verdict.source,
            "target_count": verdict.target,
            "count_difference": verdict.source - verdict.target,
            "percentage_difference": verdict.percentage,
            "audit_tolerance_percent": verdict.tolerance,
            "phase_completed": Phase.AUDIT.value,
        }
        if verdict.passed:
            return await self.complete(lease, values, now=now)
        return await self.fail(lease, str(verdict.mismatch()), values, now=now)
