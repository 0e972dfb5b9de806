"""What people read: ledger windows and summaries as rich tables or JSON-ready dicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from rich.table import Table

from ledgerflow.ledger import AuditResult, LedgerSummary, PipelineRecord
from ledgerflow.ledger.audit import explain_record
from ledgerflow.windows import check_granularity

AUDIT_STYLE = {
    AuditResult.PASS: "[green]PASS[/]",
    AuditResult.MATCH: "[green]MATCH[/]",
    AuditResult.FAIL: "[bold red]FAIL[/]",
}

STATUS_STYLE = {
    "COMPLETED": "green",
    "FAILED": "bold red",
    "IN_PROGRESS": "yellow",
    "PENDING": "cyan",
}


def _duration(record: PipelineRecord) -> float | None:
    if record.pipeline_start_time and record.pipeline_end_time:
        return round((record.pipeline_end_time - record.pipeline_start_time).total_seconds(), 3)
    return None


def record_dict(record: PipelineRecord, timezone: str) -> dict[str, Any]:
    """A window as plain JSON-ready data."""
    window = record.window
    lo, hi = window.local(timezone)
    return {
        "id": record.id,
        **window.to_dict(),
        "local_start": lo.isoformat(),
        "local_end": hi.isoformat(),
        "status": record.pipeline_status,
        "phase_completed": record.phase_completed,
        "source_count": record.source_count,
        "target_count": record.target_count,
        "audit_result": record.audit_result,
        "audit": explain_record(record),
        "count_difference": record.count_difference,
        "percentage_difference": _decimal(record.percentage_difference),
        "audit_tolerance_percent": _decimal(record.audit_tolerance_percent),
        "retry_attempt": record.retry_attempt,
        "seconds": _duration(record),
        "dag_run_id": record.dag_run_id,
        "error": record.error_message,
    }


def windows_table(records: list[PipelineRecord], timezone: str, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name, justify in [
        ("local window", "left"),
        ("status", "left"),
        ("phase", "left"),
        ("audit", "left"),
        ("tries", "right"),
        ("secs", "right"),
    ]:
        # The audit's sentence may wrap; the rest must stay readable in a narrow terminal.
        wrap = name == "audit"
        table.add_column(name, justify=justify, no_wrap=not wrap)  # type: ignore[arg-type]
    for r in records:
        window = r.window
        lo, hi = window.local(timezone)
        odd = " [yellow](DST)[/]" if window.duration.total_seconds() != _nominal(r) else ""
        style = STATUS_STYLE.get(r.pipeline_status, "")
        secs = _duration(r)
        table.add_row(
            f"{lo:%a %m-%d %H:%M %Z} - {hi:%H:%M %Z}{odd}",
            f"[{style}]{r.pipeline_status}[/]",
            r.phase_completed or "-",
            _audit_cell(r),
            str(r.retry_attempt),
            "-" if secs is None else f"{secs:.2f}",
        )
    return table


def summary_dict(
    summary: LedgerSummary, timezone: str, now: datetime | None = None
) -> dict[str, Any]:
    moment = now or datetime.now(UTC)
    oldest = summary.oldest_pending
    lag = summary.lag(moment)
    return {
        "pipeline_id": summary.pipeline_id,
        "counts": summary.counts,
        "oldest_pending": None
        if oldest is None
        else {
            **record_dict(oldest, timezone),
            "age_seconds": int((moment - oldest.window_end_time).total_seconds()),
        },
        "newest_completed_end": None
        if summary.newest_completed_end is None
        else summary.newest_completed_end.isoformat(),
        "lag_seconds": None if lag is None else int(lag.total_seconds()),
        "gaps": [f.as_dict() for f in summary.faults if f.kind == "gap"],
        "overlaps": [f.as_dict() for f in summary.faults if f.kind == "overlap"],
        "in_progress": [record_dict(r, timezone) for r in summary.in_progress],
        "failed": [record_dict(r, timezone) for r in summary.failed],
    }


def human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    days, rest = divmod(abs(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    text = f"{days}d {hours}h" if days else f"{hours}h {minutes}m"
    return ("-" if seconds < 0 else "") + text


def _nominal(record: PipelineRecord) -> float:
    return check_granularity(record.time_interval).total_seconds()


def _num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _audit_cell(record: PipelineRecord) -> str:
    """`FAIL source 1,000, target 999: 1 missing (0.1%) > tolerance 0%`, the verdict coloured."""
    verdict = AUDIT_STYLE.get(record.audit_result or "", "")  # type: ignore[call-overload]
    text = " ".join(part for part in (verdict, explain_record(record)) if part)
    return text or "-"


def _decimal(value: Decimal | None) -> str | None:
    """A Decimal for JSON as exact text (a float would not be)."""
    return None if value is None else str(value)
