"""What people read: ledger windows and summaries as rich tables or JSON-ready dicts."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from rich.markup import escape
from rich.table import Table

from ledgerflow.clock import utc_now
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


def heartbeat_age(record: PipelineRecord, now: datetime) -> timedelta | None:
    """How long ago an IN_PROGRESS window's worker last beat (its lock's stamp), else None."""
    if record.pipeline_status != "IN_PROGRESS" or record.pipeline_locked_at is None:
        return None
    return now - record.pipeline_locked_at


def local_time(moment: datetime, timezone: str) -> str:
    """An instant as the tables show it: the pipeline's wall clock with its zone's abbreviation."""
    return f"{moment.astimezone(ZoneInfo(timezone)):%Y-%m-%d %H:%M %Z}"


def record_dict(
    record: PipelineRecord, timezone: str, now: datetime | None = None
) -> dict[str, Any]:
    """A window as plain JSON-ready data."""
    window = record.window
    beat = heartbeat_age(record, now or utc_now())
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
        "heartbeat_age_seconds": None if beat is None else int(beat.total_seconds()),
        "error": record.error_message,
    }


def windows_table(
    records: list[PipelineRecord], timezone: str, title: str, now: datetime | None = None
) -> Table:
    """One row per window, with its id (what `retry --id` takes). The error column appears when
    a FAILED window is shown whose error the audit column does not already say (why it failed),
    the heartbeat column when an IN_PROGRESS window is (how long ago its worker last beat)."""
    moment = now or utc_now()
    failed = any(_error(r) for r in records)
    running = any(r.pipeline_status == "IN_PROGRESS" for r in records)
    table = Table(title=title, title_justify="left")
    columns = [
        ("id", "right"),
        ("local window", "left"),
        ("status", "left"),
        ("phase", "left"),
        ("audit", "left"),
        ("tries", "right"),
        ("secs", "right"),
    ]
    columns += [("heartbeat", "right")] if running else []
    columns += [("error", "left")] if failed else []
    for name, justify in columns:
        # Sentences wrap, and a long word in them (a path) folds rather than being cut: an
        # error is read to act on it. The rest must stay readable in a narrow terminal.
        wrap = name in ("audit", "error")
        table.add_column(
            name,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=not wrap,
            overflow="fold" if wrap else "ellipsis",
        )
    for r in records:
        window = r.window
        lo, hi = window.local(timezone)
        odd = " [yellow](DST)[/]" if window.duration.total_seconds() != _nominal(r) else ""
        style = STATUS_STYLE.get(r.pipeline_status, "")
        secs = _duration(r)
        cells = [
            str(r.id),
            f"{lo:%a %m-%d %H:%M %Z} - {hi:%H:%M %Z}{odd}",
            f"[{style}]{r.pipeline_status}[/]",
            r.phase_completed or "-",
            _audit_cell(r),
            str(r.retry_attempt),
            "-" if secs is None else f"{secs:.2f}",
        ]
        if running:
            beat = heartbeat_age(r, moment)
            cells.append("-" if beat is None else f"{human(beat)} ago")
        if failed:
            cells.append(escape(_error(r) or "-"))
        table.add_row(*cells)
    return table


RUN_COLUMNS = ("window (local)", "status", "source", "target", "audit", "seconds", "message")


def run_row(outcome: Mapping[str, Any]) -> dict[str, Any]:
    """One window of a run as the run's artifact and `ledgerflow run` show it (from the flow's
    WindowOutcome as a dict)."""
    return {
        "window (local)": outcome["local_window"],
        "status": outcome["status"],
        "source": outcome["source_count"],
        "target": outcome["target_count"],
        "audit": f"{outcome['audit_result']}: {outcome['audit']}"
        if outcome["audit_result"]
        else None,
        "seconds": outcome["seconds"],
        "message": outcome["message"],
    }


def run_table(outcomes: list[Mapping[str, Any]], title: str) -> Table:
    """The run artifact's table, for the terminal."""
    table = Table(title=title, title_justify="left")
    for name in RUN_COLUMNS:
        numeric = name in ("source", "target", "seconds")
        table.add_column(
            name,
            justify="right" if numeric else "left",
            no_wrap=name not in ("audit", "message"),
        )
    for outcome in outcomes:
        row = run_row(outcome)
        style = STATUS_STYLE.get(row["status"], "")
        table.add_row(
            *(
                f"[{style}]{row[name]}[/]"
                if name == "status"
                else escape("-" if row[name] is None else _cell(row[name]))
                for name in RUN_COLUMNS
            )
        )
    return table


def _cell(value: Any) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def summary_dict(
    summary: LedgerSummary, timezone: str, now: datetime | None = None
) -> dict[str, Any]:
    moment = now or utc_now()
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
        "in_progress": [record_dict(r, timezone, moment) for r in summary.in_progress],
        "failed": [record_dict(r, timezone, moment) for r in summary.failed],
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


def _error(record: PipelineRecord) -> str | None:
    """A FAILED window's error, unless it only repeats the audit column's sentence (then the
    column would squeeze that sentence for nothing)."""
    error = record.error_message
    if record.pipeline_status != "FAILED" or not error:
        return None
    return None if error == f"audit failed: {explain_record(record)}" else error


def _decimal(value: Decimal | None) -> str | None:
    """A Decimal for JSON as exact text (a float would not be)."""
    return None if value is None else str(value)
