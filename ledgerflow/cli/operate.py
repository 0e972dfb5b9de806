"""Operator commands that change the ledger: retry, reload, release, backfill, retile, retarget,
rescan."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from ledgerflow.cli.common import (
    WHEN,
    ConfigOption,
    JsonOption,
    bounds_in_zone,
    console,
    fail,
    in_range,
    in_zone,
    need_config,
    open_pipeline,
    parse_bounds,
    parse_span,
    parse_when,
    run_async,
    span,
)


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

    lo_when, hi_when = parse_bounds(start, end)
    name = need_config(config)

    async def go() -> list[Any]:
        async with open_pipeline(name) as (cfg, ledger):
            lo, hi = bounds_in_zone(lo_when, hi_when, cfg.timezone, (start, end))
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
                starts = record.window_start_time
                if (lo is not None and starts < lo) or (hi is not None and starts >= hi):
                    raise ConfigError(
                        f"--id {record_id} starts at {starts.isoformat()}, outside --start/--end: "
                        "give the id alone, or a range that holds it"
                    )
            return await ledger.reset_failed(cfg.pipeline_id, ids=ids, start=lo, end=hi)

    rows = run_async(go())
    if as_json:
        typer.echo(json.dumps({"reset": [r.id for r in rows]}))
        return
    if not rows:
        console.print(f"no FAILED windows to retry in {name}", markup=False, highlight=False)
        return
    console.print(f"{len(rows)} FAILED window(s) back to PENDING: {[r.id for r in rows]}")


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
        from ledgerflow.wiring import load_target

        async with open_pipeline(name) as (cfg, ledger):
            lo, hi = span(lo_when, hi_when, cfg.timezone, start, end)
            target = (await load_target(cfg)).identity()
            with Progress(console=console, transient=True, disable=as_json) as bar:
                task = bar.add_task("registering windows", total=None)
                return await plan_backfill(
                    ledger,
                    cfg,
                    lo,
                    hi,
                    dry_run=dry_run,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                    target=target,
                )

    plan = run_async(go())
    if as_json:
        typer.echo(json.dumps(plan.as_dict()))
        return
    verb = "would register" if dry_run else "registered"
    found = (
        f"{plan.windows} eligible window(s) from {plan.first} to {plan.last}; {verb} "
        f"{plan.new if dry_run else plan.registered} new at backfill priority"
        if plan.windows
        else f"no eligible window in {start} - {end}; nothing {verb}"
    )
    if plan.skipped_not_eligible:
        found += f"; {plan.skipped_not_eligible} not yet eligible (x_time_back)"
    if plan.past_end:
        found += f"; {plan.past_end} starting at or after the config's end left out"
    console.print(found, markup=False, highlight=False, soft_wrap=True)


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


def retarget(
    config: ConfigOption = None,
    rows_moved: Annotated[
        bool,
        typer.Option(
            "--rows-moved",
            help="You moved the loaded rows to the new target yourself: recount each loaded "
            "window there and load only those whose counts differ",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Move the pipeline to the config's target (another table, schema or database).

    Change the config's target first, then retarget. Every loaded window is loaded again into
    the new target (or, with --rows-moved, recounted there and loaded where the counts differ)
    by the next runs; until then `status` shows them PENDING. A window in progress refuses it.
    Runs into a target other than the recorded one are refused, so no run loads part of the
    windows into one place and the rest into another."""
    from ledgerflow.wiring import load_target

    name = need_config(config)

    async def go() -> Any:
        async with open_pipeline(name) as (cfg, ledger):
            target = (await load_target(cfg)).identity()
            return await ledger.retarget(cfg.pipeline_id, target, rows_moved=rows_moved)

    done = run_async(go())
    if as_json:
        typer.echo(json.dumps(done.__dict__))
        return
    if done.old == done.new:
        console.print(f"{done.pipeline_id} already loads into {done.new}; nothing changed")
        return
    how = "recounted there (loaded where counts differ)" if rows_moved else "loaded again there"
    console.print(
        f"{done.pipeline_id}: target {done.old or 'unrecorded'} -> {done.new}; "
        f"{done.reopened} loaded window(s) reopened, to be {how} by the next runs"
    )


def rescan(
    last: Annotated[int, typer.Option(help="How many of the newest COMPLETED windows to recount")],
    config: ConfigOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report without reopening")] = False,
    as_json: JsonOption = False,
) -> None:
    """Recount source and target; reopen windows whose counts disagree or changed since loading."""
    from ledgerflow.operate import rescan as do_rescan
    from ledgerflow.wiring import load_systems

    in_range("--last", last)
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
