"""The `ledgerflow` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ledgerflow.errors import LedgerflowError
from ledgerflow.ledger import Ledger
from ledgerflow.windows import as_utc, windows_between

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
    Console(stderr=True).print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    from sqlalchemy.exc import DBAPIError

    try:
        return asyncio.run(coro)
    except LedgerflowError as exc:
        raise fail(str(exc)) from None
    except DBAPIError as exc:
        raise fail(f"the ledger database refused the request: {exc.orig}") from None


def parse_instant(text: str, option: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise fail(
            f"{option}={text!r} is not an ISO 8601 instant, e.g. 2025-03-09T00:00:00Z"
        ) from None
    if value.tzinfo is None:
        raise fail(f"{option}={text!r} has no UTC offset; add Z or e.g. -08:00")
    return as_utc(value)


@app.callback()
def main() -> None:
    """Windowed batch ELT on Prefect 2: every window loaded exactly once."""
    from ledgerflow.prefect_home import start_ephemeral_api

    start_ephemeral_api()  # several commands may start at once on one fresh Prefect home


@app.command()
def plan(
    timezone: Annotated[str, typer.Option(help="IANA timezone, e.g. America/Los_Angeles")],
    granularity: Annotated[str, typer.Option(help="Window size: a divisor of 24h or whole days")],
    start: Annotated[str, typer.Option(help="ISO 8601 instant with offset")],
    end: Annotated[str, typer.Option(help="ISO 8601 instant with offset")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Print the windows that tile [start, end), to see what a DST day does before deploying."""
    lo, hi = parse_instant(start, "--start"), parse_instant(end, "--end")
    if hi <= lo:
        raise fail(f"--end={end!r} must be after --start={start!r}")
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


ConfigOption = Annotated[str, typer.Option("--config", "-c", help="PipelineConfig block name")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")]


@contextlib.asynccontextmanager
async def open_pipeline(config_name: str) -> AsyncIterator[tuple[Any, Ledger]]:
    """The validated config block and an open Ledger it points at."""
    from ledgerflow.blocks.config import load_final_config
    from ledgerflow.flows.pipeline import load_block

    config = await load_final_config(config_name)
    ledger_block = await load_block(config.ledger_block, "ledger_block")
    async with ledger_block.open() as ledger:
        await ledger.check_schema()  # a clear "run ledgerflow init" instead of a SQL error
        yield config, ledger


@app.command()
def init(config: ConfigOption = "default") -> None:
    """Create (or check) the ledger schema for a pipeline. Safe to run again."""

    async def go() -> str:
        from ledgerflow.blocks.config import load_final_config
        from ledgerflow.flows.pipeline import load_block

        cfg = await load_final_config(config)
        block = await load_block(cfg.ledger_block, "ledger_block")
        async with block.open() as ledger:
            await ledger.create_schema()
        return str(block.display_url())

    console.print(f"ledger schema ready at {run_async(go())}")


@app.command()
def status(config: ConfigOption = "default", as_json: JsonOption = False) -> None:
    """Counts per status, the oldest pending window and its age, the lag, and failures."""
    from ledgerflow.report import human, summary_dict, windows_table

    async def go() -> tuple[Any, Any]:
        async with open_pipeline(config) as (cfg, ledger):
            return cfg, await ledger.summary(cfg.pipeline_id)

    cfg, summary = run_async(go())
    data = summary_dict(summary, cfg.timezone)
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    counts = "  ".join(f"{k}: [bold]{v}[/]" for k, v in summary.counts.items())
    console.print(f"[bold]{cfg.pipeline_id}[/]  {counts}")
    now = datetime.now(UTC)
    lag = summary.lag(now)
    console.print(
        f"loaded up to: {summary.newest_completed_end or 'nothing yet'}"
        + (f"  (lag {human(lag)} behind now)" if lag else "")
    )
    if summary.oldest_pending is not None:
        age = now - summary.oldest_pending.window_end_time
        console.print(
            f"oldest pending: {summary.oldest_pending.window_start_time.isoformat()} "
            f"(ended {human(age)} ago)"
        )
    if summary.in_progress:
        console.print(windows_table(summary.in_progress, cfg.timezone, "In progress"))
    if summary.failed:
        console.print(windows_table(summary.failed, cfg.timezone, "Failed (newest first)"))
        for r in summary.failed:
            console.print(
                f"  [red]id={r.id}[/] {r.window_start_time.isoformat()}: {r.error_message}"
            )


@app.command()
def windows(
    config: ConfigOption = "default",
    status: Annotated[
        list[str] | None,
        typer.Option("--status", "-s", help="PENDING, IN_PROGRESS, COMPLETED or FAILED"),
    ] = None,
    start: Annotated[str | None, typer.Option(help="Windows starting at or after (ISO)")] = None,
    end: Annotated[str | None, typer.Option(help="Windows starting before (ISO)")] = None,
    limit: Annotated[int, typer.Option(help="At most this many")] = 200,
    newest: Annotated[bool, typer.Option("--newest", help="Newest first")] = False,
    as_json: JsonOption = False,
) -> None:
    """List windows with their status, phase, counts, attempts and durations."""
    from ledgerflow.ledger import Status
    from ledgerflow.report import record_dict, windows_table

    allowed = {s.value for s in Status}
    wanted = [s.upper() for s in status or []]
    if bad := [s for s in wanted if s not in allowed]:
        raise fail(f"--status {bad[0]!r} is not a status; allowed: {sorted(allowed)}")
    lo = parse_instant(start, "--start") if start else None
    hi = parse_instant(end, "--end") if end else None

    async def go() -> tuple[Any, list[Any]]:
        async with open_pipeline(config) as (cfg, ledger):
            rows = await ledger.windows(
                cfg.pipeline_id, statuses=wanted, start=lo, end=hi, limit=limit, newest_first=newest
            )
            return cfg, rows

    cfg, rows = run_async(go())
    if as_json:
        typer.echo(json.dumps([record_dict(r, cfg.timezone) for r in rows], indent=2, default=str))
        return
    console.print(windows_table(rows, cfg.timezone, f"{len(rows)} window(s) of {cfg.pipeline_id}"))


@app.command()
def run(
    config: ConfigOption = "default",
    max_windows: Annotated[
        int | None, typer.Option(help="Process at most this many windows")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Start one ad-hoc flow run in this process and show what it did."""
    from ledgerflow.flows.pipeline import windowed_pipeline

    async def go() -> Any:
        return await windowed_pipeline(
            config_block=config, max_windows=max_windows, return_state=True
        )

    state = run_async(go())
    rows = state.result(raise_on_failure=False, fetch=True) if not state.is_crashed() else []
    if as_json:
        typer.echo(
            json.dumps(
                {"state": state.type.value, "message": state.message, "windows": rows}, default=str
            )
        )
    else:
        console.print(f"[bold]{state.type.value}[/]: {state.message}")
    if not state.is_completed():
        raise typer.Exit(code=1)


@app.command()
def retry(
    config: ConfigOption = "default",
    ids: Annotated[
        list[int] | None, typer.Option("--id", help="Window ids (default: all FAILED)")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="Only windows starting at or after (ISO)")
    ] = None,
    end: Annotated[str | None, typer.Option(help="Only windows starting before (ISO)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Put FAILED windows back to PENDING (a window that failed while loading resumes at load)."""
    lo = parse_instant(start, "--start") if start else None
    hi = parse_instant(end, "--end") if end else None

    async def go() -> list[Any]:
        async with open_pipeline(config) as (cfg, ledger):
            return await ledger.reset_failed(cfg.pipeline_id, ids=ids, start=lo, end=hi)

    rows = run_async(go())
    if as_json:
        typer.echo(json.dumps({"reset": [r.id for r in rows]}))
        return
    console.print(f"{len(rows)} FAILED window(s) back to PENDING: {[r.id for r in rows]}")


@app.command()
def reload(
    start: Annotated[str, typer.Option(help="Windows starting at or after (ISO)")],
    end: Annotated[str, typer.Option(help="Windows starting before (ISO)")],
    config: ConfigOption = "default",
    as_json: JsonOption = False,
) -> None:
    """Reopen COMPLETED or FAILED windows starting in [start, end): the next run reloads them."""
    from ledgerflow.ledger import Status

    lo, hi = parse_instant(start, "--start"), parse_instant(end, "--end")
    if hi <= lo:
        raise fail(f"--end={end!r} must be after --start={start!r}")

    async def go() -> list[Any]:
        async with open_pipeline(config) as (cfg, ledger):
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
    console.print(f"{len(rows)} window(s) reopened; the next run reloads them")


@app.command()
def release(
    config: ConfigOption = "default",
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

    async def go() -> list[Any]:
        async with open_pipeline(config) as (cfg, ledger):
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
    console.print(
        f"released {len(rows)} stale lock(s): "
        + ", ".join(f"id={r.id} -> {r.pipeline_status}" for r in rows)
    )


@app.command()
def backfill(
    start: Annotated[str, typer.Option(help="ISO instant with offset")],
    end: Annotated[str, typer.Option(help="ISO instant with offset")],
    config: ConfigOption = "default",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be registered")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Register the eligible windows of [start, end) behind the fresh ones (lower priority)."""
    from rich.progress import Progress

    from ledgerflow.operate import backfill as plan_backfill

    lo, hi = parse_instant(start, "--start"), parse_instant(end, "--end")
    if hi <= lo:
        raise fail(f"--end={end!r} must be after --start={start!r}")

    async def go() -> Any:
        async with open_pipeline(config) as (cfg, ledger):
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
def rescan(
    last: Annotated[int, typer.Option(help="How many of the newest COMPLETED windows to recount")],
    config: ConfigOption = "default",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report without reopening")] = False,
    as_json: JsonOption = False,
) -> None:
    """Late-data detection: recount the source and reopen windows whose count changed."""
    from ledgerflow.flows.pipeline import close_parts, load_parts
    from ledgerflow.operate import rescan as do_rescan

    if last < 1:
        raise fail(f"--last={last} must be at least 1")

    async def go() -> Any:
        async with open_pipeline(config) as (cfg, ledger):
            parts = await load_parts(cfg)
            try:
                return await do_rescan(ledger, parts.source, cfg.pipeline_id, last, dry_run=dry_run)
            finally:
                await close_parts(parts)

    result = run_async(go())
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    console.print(f"checked {result.checked} window(s); {len(result.changed)} changed")
    for item in result.changed:
        action = "reopened" if item.reopened else "would reopen"
        console.print(
            f"  id={item.record_id} {item.window_start}: loaded {item.loaded}, source now "
            f"{item.source_now} -> {action}"
        )


blocks_app = typer.Typer(help="Create the pipeline's blocks.", no_args_is_help=True)
app.add_typer(blocks_app, name="blocks")


@blocks_app.command("register")
def blocks_register(
    file: Annotated[Path, typer.Option("--file", "-f", help="TOML file describing the blocks")],
) -> None:
    """Validate and save every block in the file (`${VAR}` reads the environment)."""
    from ledgerflow.deployments.register import register_file

    for slug in run_async(register_file(file)):
        console.print(f"saved {slug}")


@app.command()
def demo(
    root: Annotated[str, typer.Option(help="Folder for the demo's files")] = ".ledgerflow/demo",
    rows: Annotated[int, typer.Option(help="Events to generate")] = 40_000,
) -> None:
    """Run the whole pipeline end to end on the embedded defaults (no services needed)."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the demo prints its own story
    from ledgerflow.demo import run_demo

    run_async(run_demo(Path(root).absolute(), rows, console))


if __name__ == "__main__":  # pragma: no cover
    app()
