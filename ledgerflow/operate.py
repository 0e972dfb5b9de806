"""Operator actions behind the CLI: retry, release, backfill and rescan (late data, target drift).

Each returns plain data (for `--json`) and changes the ledger only through `Ledger`'s methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ledgerflow.ledger import Ledger, PipelineRecord, Status
from ledgerflow.ledger.registration import check_target
from ledgerflow.ports import Source, Target
from ledgerflow.windows import Grid, before_end, build_record, windows_between

BACKFILL_PRIORITY = -1
"""Backfilled windows are claimed after fresh ones (Airflow#29479: a big backfill must not delay
the scheduled windows)."""


@dataclass(frozen=True)
class BackfillPlan:
    windows: int
    new: int
    first: str | None
    last: str | None
    skipped_not_eligible: int
    registered: int = 0
    past_end: int = 0  # windows of the range starting at or after the config's `end`: left out

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


async def backfill(
    ledger: Ledger,
    config: Any,
    start: datetime,
    end: datetime,
    *,
    dry_run: bool,
    progress: Callable[[int, int], None] | None = None,
    now: datetime | None = None,
    target: str | None = None,
) -> BackfillPlan:
    """Register every eligible window overlapping [start, end) at backfill priority.

    Through the scheduled registration's own path (same grid check, same overlap check), but
    only inside the range and without moving the registration watermark: the schedule still
    registers everything between its watermark and now, whatever was backfilled."""
    cut = windows_between(start, end, config.timezone, config.granularity)
    # The config's `end` holds for a backfill too (the runs would load what it registered past
    # it, and the span between would read as a gap).
    in_range = before_end(cut, config.end)
    hooks, checks = config.key_hooks(), tuple(config.check_fields)
    done = await ledger.register_windows(
        config.pipeline_id,
        Grid.of(config.timezone, config.granularity),
        lambda _watermark, cutoff: [w for w in in_range if w.end <= cutoff],
        lambda w: build_record(config.pipeline_id, w, config.timezone, hooks, checks),
        lag=config.lag,
        scheduled=False,
        priority=BACKFILL_PRIORITY,
        dry_run=dry_run,
        now=now,
        target=target,
    )
    eligible = done.windows
    if progress and not dry_run:
        progress(done.new, done.new)
    return BackfillPlan(
        windows=len(eligible),
        new=done.new,
        first=eligible[0].start_iso if eligible else None,
        last=eligible[-1].start_iso if eligible else None,
        skipped_not_eligible=len(in_range) - len(eligible),
        registered=0 if dry_run else done.new,
        past_end=len(cut) - len(in_range),
    )


@dataclass(frozen=True)
class ChangedWindow:
    """One window whose recounts disagree with each other or with what the ledger recorded."""

    window_start: str
    record_id: int
    loaded: int | None  # the target count the ledger recorded
    source_then: int | None  # the source count the ledger recorded
    source_now: int
    target_now: int
    reason: str
    reopened: bool


@dataclass
class RescanResult:
    """What a rescan found: how many COMPLETED windows it recounted, and those that changed."""

    checked: int = 0
    changed: list[ChangedWindow] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "changed": [r.__dict__ for r in self.changed]}


def rescan_reason(record: PipelineRecord, source_now: int, target_now: int) -> str | None:
    """Why a COMPLETED window needs loading again, or None when its recounts and the ledger's
    counts all agree."""
    reasons = []
    if source_now != target_now:
        reasons.append(f"source {source_now:,} != target {target_now:,} now")
    if record.source_count != source_now:
        reasons.append(f"source count {_num(record.source_count)} -> {source_now:,}")
    if record.target_count != target_now:
        reasons.append(f"target count {_num(record.target_count)} -> {target_now:,}")
    return "; ".join(reasons) or None


async def rescan(
    ledger: Ledger,
    source: Source,
    target: Target,
    pipeline_id: str,
    last: int,
    *,
    dry_run: bool,
) -> RescanResult:
    """Recount the source and the target for the newest `last` COMPLETED windows; reopen those
    whose recounts disagree or differ from the recorded counts, so the next run loads them again
    (late documents in the source, rows lost or duplicated in the target behind the ledger's
    back). Refused when the target is not the one the windows were loaded into: every window
    would look emptied (`ledgerflow retarget` moves a pipeline)."""
    check_target(pipeline_id, await ledger.target_of(pipeline_id), target.identity())
    done = await ledger.windows(
        pipeline_id, statuses=[Status.COMPLETED.value], limit=last, newest_first=True
    )
    result = RescanResult(checked=len(done))
    for record in done:
        # One window at a time, both sides at once: the load on the source and the warehouse
        # stays that of one worker, however many windows are rescanned.
        source_now, target_now = await asyncio.gather(
            source.count(record.window), target.count(record.window, pipeline_id)
        )
        reason = rescan_reason(record, source_now, target_now)
        if reason is None:
            continue
        if not dry_run:
            # Forced: a change was seen, and equal counts no longer prove the target right (a late
            # row and a duplicated one cancel out; the reload must not be skipped on them).
            await ledger.reopen(pipeline_id, [record.id or 0], f"rescan: {reason}", force=True)
        result.changed.append(
            ChangedWindow(
                window_start=record.window.start_iso,
                record_id=record.id or 0,
                loaded=record.target_count,
                source_then=record.source_count,
                source_now=source_now,
                target_now=target_now,
                reason=reason,
                reopened=not dry_run,
            )
        )
    return result


def _num(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def parse_age(text: str) -> timedelta:
    from ledgerflow.durations import parse_duration

    return parse_duration(text, field="--older-than", allow_zero=True)
