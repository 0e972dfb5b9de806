"""The `ledgerflow` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ledgerflow.errors import LedgerflowError
from ledgerflow.windows import as_utc

if TYPE_CHECKING:
    from ledgerflow.ledger import Ledger

app = typer.Typer(
    name="ledgerflow",
    help="Windowed batch ELT on Prefect 2: every window loaded exactly once.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
_probe = Console()
# Tables are wide; when piped (no terminal to measure), do not squeeze them into 80 columns.
console = _probe if _probe.is_terminal else Console(width=120)
T = TypeVar("T")


def fail(message: str) -> typer.Exit:
    err = Console(stderr=True)
    # The message is text, never markup ("[ledger] type='x' is unknown" keeps its "[ledger]"),
    # and is printed whole: no wrapping or cropping at the terminal's width.
    err.print("error:", style="bold red", end=" ")
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    from sqlalchemy.exc import DBAPIError

    try:
        return asyncio.run(coro)
    except LedgerflowError as exc:
        raise fail(str(exc)) from None
    except DBAPIError as exc:
        raise fail(f"the ledger database refused the request: {exc.orig}") from None


def parse_when(text: str, option: str) -> datetime | date:
    """An ISO 8601 instant with its offset, or a plain date (read later in the pipeline's zone)."""
    if len(text) == 10:
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise fail(
            f"{option}={text!r} is not an ISO 8601 instant or a date, e.g. "
            "2025-03-09T00:00:00Z or 2025-03-09"
        ) from None
    if value.tzinfo is None:
        raise fail(f"{option}={text!r} has no UTC offset; add Z or e.g. -08:00, or give a date")
    return as_utc(value)


def in_zone(value: datetime | date, timezone: str) -> datetime:
    """A plain date is local midnight in `timezone`; an instant stays as it is."""
    from ledgerflow.windows import to_utc, zone

    if isinstance(value, datetime):
        return value
    try:
        return to_utc(value, time(), zone(timezone))  # the grid's rule for local wall times
    except LedgerflowError as exc:
        raise fail(str(exc)) from None


def span(
    lo: datetime | date, hi: datetime | date, timezone: str, start: str, end: str
) -> tuple[datetime, datetime]:
    """--start and --end as instants in `timezone`, the end after the start."""
    lo_at, hi_at = in_zone(lo, timezone), in_zone(hi, timezone)
    if hi_at <= lo_at:
        raise fail(f"--end={end!r} must be after --start={start!r}")
    return lo_at, hi_at


def parse_span(start: str, end: str) -> tuple[datetime | date, datetime | date]:
    """--start and --end parsed; refused at once when both are of one kind and out of order
    (a date and an instant are compared once the pipeline's zone is known)."""
    lo, hi = parse_when(start, "--start"), parse_when(end, "--end")
    if isinstance(lo, datetime) == isinstance(hi, datetime):
        span(lo, hi, "UTC", start, end)
    return lo, hi


WHEN = "ISO 8601 instant with offset, or a date: local midnight in the pipeline's timezone"


@app.callback()
def main() -> None:
    """Windowed batch ELT on Prefect 2: every window loaded exactly once."""
    # Nothing here starts Prefect: commands that load blocks call `need_config`/`prefect_ready`,
    # so `plan`, `demo` (which must import Prefect first, after choosing its own home) and
    # `--help` start fast.


def prefect_ready(*, saves_blocks: bool = False) -> None:
    """Start Prefect's ephemeral API (when there is no server) before the first block is read.

    Only commands that load blocks call this: `plan`, `demo` and `--help` never start Prefect."""
    from ledgerflow.prefect_home import start_ephemeral_api

    start_ephemeral_api(saves_blocks=saves_blocks)  # several commands may start at once


def need_config(name: str | None, *, saves_blocks: bool = False) -> str:
    """The -c value, or an error that lists the PipelineConfig blocks to choose from.

    Starts Prefect's ephemeral API first: every command that needs a pipeline loads blocks."""
    prefect_ready(saves_blocks=saves_blocks)
    if name:
        return name
    from ledgerflow.blocks.config import pipeline_config_names, saved_configs_sentence

    names = run_async(pipeline_config_names())
    raise fail(
        f"-c/--config NAME is needed (a PipelineConfig block); {saved_configs_sentence(names)}"
    )


@app.command()
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


ConfigOption = Annotated[
    str | None, typer.Option("--config", "-c", help="PipelineConfig block name (required)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")]


@contextlib.asynccontextmanager
async def open_pipeline(config_name: str) -> AsyncIterator[tuple[Any, Ledger]]:
    """The validated config block and an open Ledger it points at."""
    from ledgerflow.blocks.config import load_final_config
    from ledgerflow.wiring import load_ledger  # the ledger's block, not every block

    config = await load_final_config(config_name)
    ledger_block = await load_ledger(config)
    async with ledger_block.open() as ledger:
        await ledger.check_schema()  # a clear "run ledgerflow init" instead of a SQL error
        yield config, ledger


def prefect_api() -> str:
    """Where blocks and deployments go: the server in PREFECT_API_URL, or this machine only."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    url = PREFECT_API_URL.value()
    if url:
        return f"the Prefect server at {url}"
    return (
        f"the local Prefect database in {PREFECT_HOME.value()} (PREFECT_API_URL is not set: "
        "a server and its workers will not see it)"
    )


@app.command()
def init(
    config: Annotated[
        str | None,
        typer.Option(
            "--config", "-c", help="Also create the ledger schema of this PipelineConfig block"
        ),
    ] = None,
) -> None:
    """Register ledgerflow's block types with Prefect (and create a pipeline's ledger schema).

    Safe to run again. The block types let the Prefect UI create ledgerflow blocks; saving a
    block from Python or `ledgerflow blocks register` registers its own type too.
    """
    prefect_ready(saves_blocks=True)

    async def go() -> tuple[list[str], str | None, list[int]]:
        from ledgerflow.blocks.catalog import register_block_types

        slugs = await register_block_types()
        if config is None:
            return slugs, None, []
        from ledgerflow.blocks.config import load_final_config
        from ledgerflow.wiring import load_ledger

        cfg = await load_final_config(config)
        block = await load_ledger(cfg)
        async with block.open() as ledger:
            upgraded = await ledger.create_schema()
        return slugs, str(block.display_url()), upgraded

    slugs, ledger_url, upgraded = run_async(go())
    console.print(
        f"registered {len(slugs)} block types on {prefect_api()}: {', '.join(slugs)}",
        soft_wrap=True,
    )
    if ledger_url is not None:
        done = f" (upgraded in place to version {upgraded[-1]})" if upgraded else ""
        console.print(f"ledger schema ready at {ledger_url}{done}", soft_wrap=True)


@app.command()
def status(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Counts per status, the oldest pending window and its age, the lag, and failures.

    Times are the pipeline's local time (UTC in --json)."""
    from ledgerflow.report import human, local_time, summary_dict, windows_table

    name = need_config(config)

    async def go() -> tuple[Any, Any]:
        async with open_pipeline(name) as (cfg, ledger):
            return cfg, await ledger.summary(cfg.pipeline_id, start=cfg.start, end=cfg.end)

    cfg, summary = run_async(go())
    now = datetime.now(UTC)
    data = summary_dict(summary, cfg.timezone, now)
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
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


@app.command()
def windows(
    config: ConfigOption = None,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", "-s", help="PENDING, IN_PROGRESS, COMPLETED or FAILED"),
    ] = None,
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
    from ledgerflow.ledger import Status
    from ledgerflow.report import record_dict, windows_table

    allowed = {s.value for s in Status}
    wanted = [s.upper() for s in status or []]
    if bad := [s for s in wanted if s not in allowed]:
        raise fail(f"--status {bad[0]!r} is not a status; allowed: {sorted(allowed)}")
    lo = parse_when(start, "--start") if start else None
    hi = parse_when(end, "--end") if end else None
    name = need_config(config)

    async def go() -> tuple[Any, list[Any]]:
        async with open_pipeline(name) as (cfg, ledger):
            rows = await ledger.windows(
                cfg.pipeline_id,
                statuses=wanted,
                start=None if lo is None else in_zone(lo, cfg.timezone),
                end=None if hi is None else in_zone(hi, cfg.timezone),
                limit=limit,
                newest_first=newest,
            )
            return cfg, rows

    cfg, rows = run_async(go())
    now = datetime.now(UTC)
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


@contextlib.contextmanager
def prefect_console(verbose: bool) -> Iterator[None]:
    """Prefect's log lines off the terminal for a run, unless `verbose` (then at least INFO).

    Through Prefect's own environment overrides of its logging config, because every flow run
    applies that config again (engine `setup_logging()`): levels set on loggers or handlers
    directly would not last into the run. Only the console handler is raised when quiet, so
    the run's logs still reach the Prefect API (the UI)."""
    import logging

    from prefect.logging.configuration import setup_logging

    setup_logging()  # the level the configuration gives, as the run will apply it
    if not verbose:
        overrides = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL"}
    elif logging.getLogger("prefect").getEffectiveLevel() > logging.INFO:
        overrides = {"PREFECT_LOGGING_LOGGERS_PREFECT_LEVEL": "INFO"}
    else:
        overrides = {}
    saved = {name: os.environ.get(name) for name in overrides}
    # An incremental config does not set a level back to 0 (NOTSET): restore them by hand.
    levels = {h: h.level for h in logging.getLogger().handlers}
    os.environ.update(overrides)
    setup_logging()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        setup_logging()
        for handler, level in levels.items():
            handler.setLevel(level)


@app.command()
def run(
    config: ConfigOption = None,
    max_windows: Annotated[
        int | None, typer.Option(help="Process at most this many windows")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show Prefect's log lines while it runs")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Start one ad-hoc flow run in this process; print its window table (the run artifact's)
    and how many eligible windows are still pending."""
    from ledgerflow.report import run_table

    name = need_config(config, saves_blocks=True)  # a run writes to Prefect: let it register

    async def go() -> tuple[Any, Any, int]:
        from ledgerflow.blocks.config import load_final_config
        from ledgerflow.flows.pipeline import windowed_pipeline

        # Before the flow starts: a config that does not load is one line, not a failed run.
        cfg = await load_final_config(name)
        with prefect_console(verbose):
            state = await windowed_pipeline(
                config_block=name, max_windows=max_windows, return_state=True
            )
        async with open_pipeline(name) as (_, ledger):
            pending = await ledger.count_eligible(cfg.pipeline_id, lag=cfg.lag)
        return cfg, state, pending

    from ledgerflow.compat import state_result_sync

    cfg, state, pending = run_async(go())
    rows = state_result_sync(state, raise_on_failure=False) if not state.is_crashed() else []
    rows = rows if isinstance(rows, list) else []
    budget = max_windows or cfg.windows_per_run
    # Only a run that used its whole budget left them behind; otherwise they became eligible
    # (or were reset) after its last claim.
    still = pending if len(rows) >= budget else 0
    if as_json:
        data = {
            "state": state.type.value,
            "message": state.message,
            "windows": rows,
            "pending_eligible": pending,
        }
        typer.echo(json.dumps(data, default=str))
    else:
        if rows:
            console.print(run_table(rows, f"{cfg.pipeline_id}: {len(rows)} window(s)"))
        console.print(f"[bold]{state.type.value}[/]: ", end="")
        console.print(state.message, markup=False, highlight=False, soft_wrap=True)
        if still:
            console.print(f"{still} window(s) still pending: run again")
    if not state.is_completed():
        raise typer.Exit(code=1)


@app.command()
def retry(
    config: ConfigOption = None,
    ids: Annotated[
        list[int] | None, typer.Option("--id", help="Window ids (default: all FAILED)")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help=f"Only windows starting at or after ({WHEN})")
    ] = None,
    end: Annotated[str | None, typer.Option(help=f"Only windows starting before ({WHEN})")] = None,
    as_json: JsonOption = False,
) -> None:
    """Put FAILED windows back to PENDING (a window that failed while loading resumes at load)."""
    from ledgerflow.errors import ConfigError
    from ledgerflow.ledger import Status

    lo = parse_when(start, "--start") if start else None
    hi = parse_when(end, "--end") if end else None
    name = need_config(config)

    async def go() -> list[Any]:
        async with open_pipeline(name) as (cfg, ledger):
            for record_id in ids or []:
                # Every id is checked before any is reset: a typo resets nothing.
                record = await ledger.get(record_id)
                if record is None or record.pipeline_id != cfg.pipeline_id:
                    raise ConfigError(
                        f"--id {record_id} is not a window of {cfg.pipeline_id}; "
                        f"see `ledgerflow windows -c {name} --status FAILED`"
                    )
                if record.pipeline_status != Status.FAILED:
                    raise ConfigError(
                        f"--id {record_id} is {record.pipeline_status}, not FAILED; only "
                        "FAILED windows are retried (reopen loaded ones with `ledgerflow reload`)"
                    )
            return await ledger.reset_failed(
                cfg.pipeline_id,
                ids=ids,
                start=None if lo is None else in_zone(lo, cfg.timezone),
                end=None if hi is None else in_zone(hi, cfg.timezone),
            )

    rows = run_async(go())
    if as_json:
        typer.echo(json.dumps({"reset": [r.id for r in rows]}))
        return
    if not rows:
        console.print(f"no FAILED windows to retry in {name}", markup=False, highlight=False)
        return
    console.print(f"{len(rows)} FAILED window(s) back to PENDING: {[r.id for r in rows]}")


@app.command()
def reload(
    start: Annotated[str, typer.Option(help=f"Windows starting at or after ({WHEN})")],
    end: Annotated[str, typer.Option(help=f"Windows starting before ({WHEN})")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Reopen COMPLETED or FAILED windows starting in [start, end): the next run reloads them."""
    from ledgerflow.ledger import Status

    lo_when, hi_when = parse_span(start, end)
    name = need_config(config)

    async def go() -> list[Any]:
        async with open_pipeline(name) as (cfg, ledger):
            lo, hi = span(lo_when, hi_when, cfg.timezone, start, end)
            done = await ledger.windows(
                cfg.pipeline_id,
                statuses=[Status.COMPLETED.value, Status.FAILED.value],
                start=lo,
                end=hi,
            )
            return await ledger.reopen(
                cfg.pipeline_id,
                [r.id for r in done if r.id is not None],
                f"operator reload of {start} - {end}",
                force=True,
            )

    rows = run_async(go())
    if as_json:
        typer.echo(json.dumps({"reopened": [r.id for r in rows]}))
        return
    if not rows:
        console.print(
            f"no COMPLETED or FAILED windows of {name} start in {start} - {end}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return
    console.print(f"{len(rows)} window(s) reopened; the next run reloads them")


def refuse_unsafe_age(text: str, seconds: float, cfg: Any) -> None:
    """A lock younger than two heartbeat intervals may belong to a healthy worker: its age
    reaches one interval plus the beat's own latency just before every beat."""
    from ledgerflow.errors import ConfigError
    from ledgerflow.wiring import settings_from

    every = settings_from(cfg).heartbeat_every
    if seconds < 2 * every:
        raise ConfigError(
            f"--older-than={text} is shorter than two heartbeat intervals of this pipeline "
            f"(2 x {every:g}s, a quarter of stale_threshold_hours each, at most 5 min): it "
            f"would take leases from healthy workers; allowed: at least {2 * every:g}s"
        )


@app.command()
def release(
    config: ConfigOption = None,
    older_than: Annotated[
        str | None, typer.Option(help="Lock age, e.g. 30m (default: the stale threshold)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Release stale locks now: IN_PROGRESS windows with no heartbeat go back to PENDING."""
    from ledgerflow.errors import ConfigError
    from ledgerflow.operate import parse_age

    try:
        age = parse_age(older_than) if older_than else None
    except ConfigError as exc:
        raise fail(str(exc)) from None
    name = need_config(config)

    async def go() -> list[Any]:
        if age is not None:  # before the ledger is touched
            from ledgerflow.blocks.config import load_final_config

            refuse_unsafe_age(older_than or "", age.total_seconds(), await load_final_config(name))
        async with open_pipeline(name) as (cfg, ledger):
            return await ledger.release_stale(
                cfg.pipeline_id,
                older_than=age if age is not None else cfg.stale_after,
                max_attempts=cfg.max_window_attempts,
            )

    rows = run_async(go())
    if as_json:
        typer.echo(
            json.dumps({"released": [{"id": r.id, "status": r.pipeline_status} for r in rows]})
        )
        return
    if not rows:
        console.print(f"no stale locks in {name}", markup=False, highlight=False)
        return
    console.print(
        f"released {len(rows)} stale lock(s): "
        + ", ".join(f"id={r.id} -> {r.pipeline_status}" for r in rows)
    )


@app.command()
def backfill(
    start: Annotated[str, typer.Option(help=WHEN)],
    end: Annotated[str, typer.Option(help=WHEN)],
    config: ConfigOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be registered")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Register the eligible windows of [start, end) behind the fresh ones (lower priority)."""
    from rich.progress import Progress

    from ledgerflow.operate import backfill as plan_backfill

    lo_when, hi_when = parse_span(start, end)
    name = need_config(config)

    async def go() -> Any:
        async with open_pipeline(name) as (cfg, ledger):
            lo, hi = span(lo_when, hi_when, cfg.timezone, start, end)
            with Progress(console=console, transient=True, disable=as_json) as bar:
                task = bar.add_task("registering windows", total=None)
                return await plan_backfill(
                    ledger,
                    cfg,
                    lo,
                    hi,
                    dry_run=dry_run,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )

    plan = run_async(go())
    if as_json:
        typer.echo(json.dumps(plan.as_dict()))
        return
    verb = "would register" if dry_run else "registered"
    console.print(
        f"{plan.windows} eligible window(s) from {plan.first} to {plan.last}; {verb} "
        f"{plan.new if dry_run else plan.registered} new at backfill priority"
        + (
            f"; {plan.skipped_not_eligible} not yet eligible (x_time_back)"
            if plan.skipped_not_eligible
            else ""
        )
    )


@app.command()
def retile(
    at: Annotated[str, typer.Option(help=f"From when the config's grid applies ({WHEN})")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move the pipeline to the config's grid (timezone, granularity) from --at on.

    Change the config first, then re-tile. --at must be a boundary of the new grid and the start
    or end of a registered window, no later than the last scheduled one. PENDING windows from
    --at on are removed; the next run registers the new grid's windows from --at, so nothing is
    left out, nothing overlaps and no row is loaded twice. A window from --at on that is in
    progress, loaded or failed refuses the re-tile: pick a later --at."""
    from ledgerflow.windows import Grid

    when = parse_when(at, "--at")
    name = need_config(config)

    async def go() -> Any:
        async with open_pipeline(name) as (cfg, ledger):
            grid = Grid.of(cfg.timezone, cfg.granularity)
            return await ledger.retile(cfg.pipeline_id, grid, in_zone(when, cfg.timezone))

    done = run_async(go())
    data = {
        "pipeline_id": done.pipeline_id,
        "at": done.at.isoformat(),
        "old": None if done.old is None else done.old.__dict__,
        "new": done.new.__dict__,
        "removed_pending": done.removed,
    }
    if as_json:
        typer.echo(json.dumps(data))
        return
    was = (
        "an unrecorded grid"
        if done.old is None
        else f"{done.old.granularity} in {done.old.timezone}"
    )
    console.print(
        f"{done.pipeline_id}: windows from {data['at']} on are {done.new.granularity} in "
        f"{done.new.timezone} (were {was}); removed {done.removed} pending window(s), the next "
        "run registers the new windows from there"
    )


@app.command()
def rescan(
    last: Annotated[int, typer.Option(help="How many of the newest COMPLETED windows to recount")],
    config: ConfigOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report without reopening")] = False,
    as_json: JsonOption = False,
) -> None:
    """Recount source and target; reopen windows whose counts disagree or changed since loading."""
    from ledgerflow.operate import rescan as do_rescan
    from ledgerflow.wiring import load_systems

    if last < 1:
        raise fail(f"--last={last} must be at least 1")
    name = need_config(config)

    async def go() -> Any:
        async with open_pipeline(name) as (cfg, ledger):
            systems = await load_systems(cfg)
            return await do_rescan(
                ledger, systems.source, systems.target, cfg.pipeline_id, last, dry_run=dry_run
            )

    result = run_async(go())
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    console.print(f"checked {result.checked} window(s); {len(result.changed)} changed")
    for item in result.changed:
        action = "reopened" if item.reopened else "would reopen"
        console.print(f"  id={item.record_id} {item.window_start}: {item.reason} -> {action}")


blocks_app = typer.Typer(help="Create the pipeline's blocks.", no_args_is_help=True)
app.add_typer(blocks_app, name="blocks")


@blocks_app.command("register")
def blocks_register(
    file: Annotated[Path, typer.Option("--file", "-f", help="TOML file describing the blocks")],
) -> None:
    """Validate and save every block in the file (`${VAR}` reads the environment)."""
    from ledgerflow.deployments.save_blocks import register_file

    prefect_ready(saves_blocks=True)
    for slug in run_async(register_file(file)):
        console.print(f"saved {slug}")
    console.print(f"on {prefect_api()}", soft_wrap=True)


@app.command()
def deploy(
    config: ConfigOption = None,
    pool: Annotated[
        str, typer.Option(help="Work pool (type process, or prefect-agent for an agent)")
    ] = "ledgerflow-process",
    name: Annotated[
        str | None, typer.Option(help="Deployment name (default: the config's name)")
    ] = None,
) -> None:
    """Create or update the pipeline's deployment: its schedule, zone and config come from the
    PipelineConfig block on the server in PREFECT_API_URL. Safe to run again."""
    from ledgerflow.deployments.deploy import deploy as apply_deployment

    done = run_async(apply_deployment(need_config(config, saves_blocks=True), pool, name))
    console.print(
        f"deployed {done.full_name} (id {done.id}) to the Prefect server at {done.api_url}: "
        f"work pool {done.pool} ({done.pool_type}), schedule {done.cron!r} in {done.timezone}, "
        f"config_block={done.config_block}",
        markup=False,
        highlight=False,
        soft_wrap=True,  # facts to copy (URLs, commands): never broken across lines
    )
    runner = "agent" if done.pool_type == "prefect-agent" else "worker"
    console.print(
        f"start a worker: prefect {runner} start --pool {done.pool}\n"
        f"run it now:     prefect deployment run '{done.full_name}'",
        markup=False,
        highlight=False,
        soft_wrap=True,  # facts to copy (URLs, commands): never broken across lines
    )


@app.command()
def demo(
    root: Annotated[str, typer.Option(help="Folder for the demo's files")] = ".ledgerflow/demo",
    rows: Annotated[int, typer.Option(help="Events to generate")] = 40_000,
) -> None:
    """Run the whole pipeline end to end on the embedded defaults (no services needed).

    The demo keeps its Prefect state to itself: its own PREFECT_HOME under --root and a
    temporary local API, whatever PREFECT_API_URL or profile the shell has, so it never reads
    or overwrites anyone's blocks.
    """
    folder = Path(root).absolute()
    if "prefect" in sys.modules:
        # Prefect reads its settings once, at import: too late to give the demo its own home.
        raise fail("ledgerflow demo must start before Prefect is imported; run it as a command")
    for name in _OTHER_PREFECT_STATE:
        os.environ.pop(name, None)
    home = folder / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)  # Prefect puts its database there at import
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the demo prints its own story
    from ledgerflow.demo import run_demo

    run_async(run_demo(folder, rows, console))


# Settings that would point the demo at someone's server, database or profile.
_OTHER_PREFECT_STATE = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_PROFILE",
    "PREFECT_PROFILES_PATH",
)


if __name__ == "__main__":  # pragma: no cover
    app()
