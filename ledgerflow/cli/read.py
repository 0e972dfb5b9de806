"""Commands that only read: plan (no Prefect, no ledger), status and windows."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ledgerflow.cli.common import (
    WHEN,
    ConfigOption,
    JsonOption,
    StatusOption,
    bounds_in_zone,
    console,
    fail,
    in_range,
    need_config,
    open_pipeline,
    parse_bounds,
    parse_when,
    run_async,
    span,
)
from ledgerflow.clock import utc_now
from ledgerflow.errors import ConfigError, LedgerflowError

if TYPE_CHECKING:
    from ledgerflow.blocks.config import PipelineConfig
    from ledgerflow.ledger.status import LedgerSummary


def plan(
    timezone: Annotated[str, typer.Option(help="IANA timezone, e.g. America/Los_Angeles")],
    granularity: Annotated[str, typer.Option(help="Window size: a divisor of 24h or whole days")],
    start: Annotated[str, typer.Option(help="ISO 8601 instant with offset, or a local date")],
    end: Annotated[str, typer.Option(help="ISO 8601 instant with offset, or a local date")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Print the windows that tile [start, end), to see what a DST day does before deploying.

    A plain date (2025-03-09) is local midnight in --timezone. Needs no Prefect."""
    from ledgerflow.windows import windows_between, zone

    try:
        zone(timezone)
    except LedgerflowError as exc:
        raise fail(str(exc)) from None
    lo, hi = span(parse_when(start, "--start"), parse_when(end, "--end"), timezone, start, end)
    try:
        windows = windows_between(lo, hi, timezone, granularity)
    except LedgerflowError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps([w.to_dict() for w in windows], indent=2))
        return
    table = Table(title=f"{len(windows)} windows of {granularity} in {timezone}")
    for column in ("target_day", "local start", "local end", "UTC start", "UTC end", "length"):
        table.add_column(column)
    for w in windows:
        lo_local, hi_local = w.local(timezone)
        odd = w.duration.total_seconds() != windows[0].duration.total_seconds()
        table.add_row(
            w.target_day.isoformat(),
            lo_local.strftime("%Y-%m-%d %H:%M %Z"),
            hi_local.strftime("%Y-%m-%d %H:%M %Z"),
            w.to_dict()["start"],
            w.to_dict()["end"],
            f"[yellow]{w.duration}[/]" if odd else str(w.duration),
        )
    console.print(table)


def status(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Counts per status, the oldest pending window and its age, the lag, and failures.

    Times are the pipeline's local time (UTC in --json). Exits 1 when something needs a
    person (FAILED windows, a gap or an overlap, a moved target), listed under "attention"."""
    from ledgerflow.report import summary_dict

    name = need_config(config)

    async def go() -> tuple[Any, Any, str | None, str | None]:
        from ledgerflow.wiring import load_target

        async with open_pipeline(name) as (cfg, ledger):
            summary = await ledger.summary(cfg.pipeline_id, start=cfg.start, end=cfg.end)
            recorded = await ledger.target_of(cfg.pipeline_id)
            try:  # the target block alone: a read-only command imports no other block type
                configured: str | None = (await load_target(cfg)).identity()
            except (ConfigError, ValueError):  # status still shows the ledger's side
                configured = None
            return cfg, summary, recorded, configured

    cfg, summary, recorded, configured = run_async(go())
    now = utc_now()
    data = summary_dict(summary, cfg.timezone, now)
    moved = recorded is not None and configured is not None and recorded != configured
    data["target"] = {"recorded": recorded, "configured": configured, "moved": moved}
    data["attention"] = attention = needs_attention(name, summary, moved)
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        _show_status(name, cfg, summary, moved, recorded, configured, now)
        for line in attention:
            console.print(f"[bold red]needs attention[/]: {line}", highlight=False)
    if attention:  # a monitor or a script sees it without reading the text
        raise typer.Exit(code=1)


def needs_attention(name: str, summary: LedgerSummary, moved: bool) -> list[str]:
    """What no run mends by itself, so a person must act: one line each, naming the command."""
    from ledgerflow.ledger.models import Status

    found = []
    failed = summary.counts.get(Status.FAILED.value, 0)
    if failed:
        found.append(
            f"{failed} window(s) FAILED: fix the cause their errors name, then "
            f"`ledgerflow retry -c {name}`"
        )
    gaps = sum(f.kind == "gap" for f in summary.faults)
    if gaps:
        found.append(
            f"{gaps} gap(s) never registered: `ledgerflow backfill -c {name}` over each span"
        )
    overlaps = sum(f.kind == "overlap" for f in summary.faults)
    if overlaps:
        found.append(f"{overlaps} overlap(s): a span registered twice (its rows may load twice)")
    if moved:
        found.append(f"the target moved: `ledgerflow retarget -c {name}`")
    return found


def _show_status(
    name: str,
    cfg: PipelineConfig,
    summary: LedgerSummary,
    moved: bool,
    recorded: str | None,
    configured: str | None,
    now: datetime,
) -> None:
    from ledgerflow.report import human, local_time, windows_table

    tz = cfg.timezone
    counts = "  ".join(f"{k}: [bold]{v}[/]" for k, v in summary.counts.items())
    console.print(f"[bold]{cfg.pipeline_id}[/]  {counts}")
    lag = summary.lag(now)
    newest = summary.newest_completed_end
    console.print(
        f"loaded up to: {'nothing yet' if newest is None else local_time(newest, tz)}"
        + (f"  (lag {human(lag)} behind now)" if lag else "")
    )
    if summary.oldest_pending is not None:
        age = now - summary.oldest_pending.window_end_time
        console.print(
            f"oldest pending: {local_time(summary.oldest_pending.window_start_time, tz)} "
            f"(ended {human(age)} ago)"
        )
    if moved:
        console.print(
            f"[bold red]target moved[/]: windows were loaded into {recorded}, the config now "
            f"names {configured}; runs are refused until `ledgerflow retarget -c {name}`"
        )
    for fault in summary.faults:
        console.print(
            f"[bold red]{fault.kind}[/] in the registered windows: "
            f"{local_time(fault.start, tz)} - {local_time(fault.end, tz)}"
            + (" (never registered: backfill it)" if fault.kind == "gap" else " (registered twice)")
        )
    if summary.in_progress:
        console.print(windows_table(summary.in_progress, tz, "In progress", now))
    if summary.failed:
        console.print(windows_table(summary.failed, tz, "Failed (newest first)", now))
        for r in summary.failed:
            console.print(f"  [red]id={r.id}[/] {local_time(r.window_start_time, tz)}: ", end="")
            console.print(r.error_message or "-", markup=False, highlight=False, soft_wrap=True)


def windows(
    config: ConfigOption = None,
    status: StatusOption = None,
    start: Annotated[
        str | None, typer.Option(help=f"Windows starting at or after ({WHEN})")
    ] = None,
    end: Annotated[str | None, typer.Option(help=f"Windows starting before ({WHEN})")] = None,
    limit: Annotated[int, typer.Option(help="At most this many")] = 200,
    newest: Annotated[bool, typer.Option("--newest", help="Newest first")] = False,
    as_json: JsonOption = False,
) -> None:
    """List windows: id, local window, status, phase, audit, tries and seconds; the error of
    FAILED windows and the heartbeat age of IN_PROGRESS ones."""
    from ledgerflow.report import record_dict, windows_table

    wanted = [s.value for s in status or []]
    in_range("--limit", limit)
    lo_when, hi_when = parse_bounds(start, end)
    name = need_config(config)

    async def go() -> tuple[Any, list[Any]]:
        async with open_pipeline(name) as (cfg, ledger):
            lo, hi = bounds_in_zone(lo_when, hi_when, cfg.timezone, (start, end))
            rows = await ledger.windows(
                cfg.pipeline_id,
                statuses=wanted,
                start=lo,
                end=hi,
                limit=limit,
                newest_first=newest,
            )
            return cfg, rows

    cfg, rows = run_async(go())
    now = utc_now()
    if as_json:
        data = [record_dict(r, cfg.timezone, now) for r in rows]
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    if not rows:
        filters = [f"status {' or '.join(wanted)}"] if wanted else []
        filters += [f"starting at or after {start}"] if start else []
        filters += [f"starting before {end}"] if end else []
        console.print(
            f"no windows match in {cfg.pipeline_id}"
            + (f" ({', '.join(filters)})" if filters else ""),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return
    title = f"{len(rows)} window(s) of {cfg.pipeline_id}"
    console.print(windows_table(rows, cfg.timezone, title, now))
