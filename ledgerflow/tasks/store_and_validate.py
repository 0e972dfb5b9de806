"""The seed's Record Generation, Record Validation and Store New and Pass Valid Record.

`register_windows` generates every window from where the ledger left off (or the config's
`start`) up to the latest eligible one, checks each record's completeness, and registers them
idempotently. `claim_window` then takes one with a row lock. When there is nothing to do, the
task ends Completed with a message saying why: that is not a failure.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import task
from prefect.client.schemas.objects import State
from prefect.states import Completed

from ledgerflow import failpoints
from ledgerflow.compat import uncached
from ledgerflow.errors import ConfigError
from ledgerflow.ledger import Lease, Ledger
from ledgerflow.ledger.registration import check_target
from ledgerflow.ports import Systems, Target
from ledgerflow.tasks.common import RunSettings, logger, timed
from ledgerflow.windows import Grid, Window, build_record, scheduled_windows


@task(name="store_and_validate.register", persist_result=False, **uncached())
async def register_windows(
    systems: Systems, settings: RunSettings, at: datetime | None = None
) -> State[Any]:
    """Register the windows that became eligible since the last run; return how many were new.

    `at` overrides the database's clock (tests). The ledger refuses a grid (timezone,
    granularity) other than the one the pipeline's windows were registered on."""

    def choose(watermark: datetime | None, cutoff: datetime) -> list[Window]:
        return scheduled_windows(
            watermark, settings.start, settings.end, cutoff, settings.timezone, settings.granularity
        )

    def build(window: Window) -> dict[str, object]:
        return build_record(
            settings.pipeline_id, window, settings.timezone, settings.hooks, settings.check_fields
        )

    await systems.ledger.prepare()
    target = systems.target.identity()
    async with timed("register windows"), systems.ledger.open() as ledger:
        if await ledger.target_of(settings.pipeline_id) is None:
            await check_adoption(ledger, systems.target, settings.pipeline_id, target)
        done = await ledger.register_windows(
            settings.pipeline_id,
            Grid.of(settings.timezone, settings.granularity),
            choose,
            build,
            lag=settings.lag,
            scheduled=True,
            now=at,
            start=settings.start,
            end=settings.end,
            target=target,
        )
    message = f"registered {done.new} new window(s); eligible up to {done.cutoff.isoformat()}"
    if done.earlier:
        first, last = done.earlier[0].to_dict()["start"], done.earlier[-1].to_dict()["end"]
        moved = (
            f"start moved before the first registered window: registered the {len(done.earlier)}"
            f" window(s) from {first} to {last} (not moving the watermark)"
        )
        logger().warning("%s", moved)
        message += f"; {moved}"
    return Completed(message=message, data=done.new)


async def check_adoption(ledger: Ledger, target: Target, pipeline_id: str, identity: str) -> None:
    """Before the ledger first records a pipeline's target (a ledger upgraded from version 2,
    whose windows were loaded before targets were recorded): ConfigError unless the configured
    target holds as many rows of the newest loaded window as the ledger says were loaded. A
    config changed before the upgrade would otherwise be recorded as where the earlier windows
    are, and hide them (red team)."""
    last = await ledger.newest_loaded(pipeline_id)
    if last is None:
        return
    found = await target.count(last.window, pipeline_id)
    if found == last.target_count:
        return
    raise ConfigError(
        f"pipeline {pipeline_id!r} loaded windows before this ledger recorded targets, and the "
        f"configured target {identity} does not hold the newest of them ("
        f"{last.window.start_iso}, id={last.id}: {last.target_count:,} row(s) loaded, "
        f"{found:,} there now), so they were loaded elsewhere. Put the target back, or move "
        "the pipeline with `ledgerflow retarget -c <config>` (every loaded window is loaded "
        "again into the configured target), or with `--rows-moved` once you moved the rows"
    )


@task(name="store_and_validate.claim", persist_result=False, **uncached())
async def claim_window(systems: Systems, settings: RunSettings, run_id: str) -> State[Any]:
    """Claim the next eligible PENDING window (row lock, fresh lease), or say why there is none.

    Eligibility (`end <= now - x_time_back`) is judged by the database's clock, like the lease."""
    target = systems.target.identity()
    async with systems.ledger.open() as ledger:
        lease: Lease | None = await ledger.claim(
            settings.pipeline_id, run_id, lag=settings.lag, newest_first=settings.newest_first
        )
        if lease is not None:
            # Read after the claim committed: a claim and a `retarget` both lock the pipeline's
            # fence counter, so either the retarget committed first and is seen here, or it
            # sees this window IN_PROGRESS and refuses.
            recorded = await ledger.target_of(settings.pipeline_id)
            try:
                check_target(settings.pipeline_id, recorded, target)
            except ConfigError as exc:
                await ledger.give_back(lease, f"not loaded by a worker with another target: {exc}")
                raise
    failpoints.hit("after_claim")
    if lease is None:
        return Completed(
            message=(
                "nothing to claim: no PENDING window ends at or before the ledger's now - "
                f"x_time_back ({settings.lag}); others are done, failed or held by another worker"
            ),
            data=None,
        )
    return Completed(message=f"claimed window {lease.window.start_iso}", data=lease)
