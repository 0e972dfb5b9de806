"""The seed's Source to Stage Transfer: clear the window's stage location, stream the source in.

A re-claimed window whose stage phase completed, whose staged files are intact (same names, same
sizes as the recorded manifest), whose staged rows equal the source's current count and whose
source fingerprint (`Source.fingerprint`, recorded with the manifest) is unchanged is not
extracted again; anything else, or a source that cannot fingerprint, extracts again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pyarrow as pa
from prefect import task

from ledgerflow import failpoints
from ledgerflow.compat import uncached
from ledgerflow.errors import ExtractCountMismatch
from ledgerflow.ledger import Lease, Phase
from ledgerflow.ports import Manifest, Systems
from ledgerflow.tasks.common import RunSettings, heartbeat, logger, timed
from ledgerflow.windows import stage_location


async def resumable_manifest(
    systems: Systems, lease: Lease, location: str, source_count: int
) -> Manifest | None:
    """The recorded manifest, if this window already staged, the files are still there, they
    hold as many rows as the source counts now, and the source's fingerprint of the window is
    the one recorded at staging (a row deleted, added or edited since must not be left out or
    loaded stale, even when the count is unchanged). A source that cannot fingerprint is
    extracted again."""
    record = lease.record
    staged = record.phase_completed == Phase.SOURCE_TO_STAGE and record.stage_manifest
    if not staged:
        return None
    manifest = Manifest.from_json(record.stage_manifest or "")
    if manifest.rows != source_count:
        logger().info(
            "window id=%s: the stage holds %s row(s), the source now counts %s: extracting again",
            lease.id,
            manifest.rows,
            source_count,
        )
        return None
    if manifest.fingerprint is None:
        logger().info(
            "window id=%s: the source gave no fingerprint when it was staged, so the stage "
            "cannot be proven current: extracting again",
            lease.id,
        )
        return None
    now = await systems.source.fingerprint(lease.window)
    if now != manifest.fingerprint:
        logger().info(
            "window id=%s: the source's records changed since the stage was written "
            "(fingerprint %s, now %s): extracting again",
            lease.id,
            manifest.fingerprint,
            now,
        )
        return None
    return manifest if manifest.matches(await systems.stage.files(location)) else None


@task(name="source_to_stage", persist_result=False, **uncached())
async def source_to_stage(
    systems: Systems, settings: RunSettings, lease: Lease, source_count: int
) -> Manifest:
    """Stage the window as Parquet files and record the manifest; return it."""
    location = stage_location(settings.pipeline_id, lease.window)
    async with timed("source to stage", lease), systems.ledger.open() as ledger:
        resumed = await resumable_manifest(systems, lease, location, source_count)
        if resumed is not None:
            logger().info("window id=%s: staged files intact, resuming at load", lease.id)
            return resumed
        await ledger.start_phase(lease, Phase.SOURCE_TO_STAGE)
        async with heartbeat(
            ledger, lease, settings.heartbeat_every, give_up_after=settings.ledger_silence_limit
        ):
            await systems.stage.clear(location)
            before = await systems.source.fingerprint(lease.window)
            # Names carry the lease, so each attempt's files differ (Snowflake load metadata).
            manifest = await systems.stage.write(
                location,
                _crashable(systems.source.extract(lease.window)),
                name_prefix=f"part-{lease.token[:8]}",
            )
            after = await systems.source.fingerprint(lease.window)
        # Recorded only when the source did not change during the extraction: then the stage
        # holds exactly the records the fingerprint describes. Otherwise a resume extracts again.
        manifest = replace(manifest, fingerprint=before if before == after else None)
        failpoints.hit("after_stage_before_ledger")
        if manifest.rows != source_count:
            await ledger.finish_phase(lease, Phase.SOURCE_TO_STAGE, failed=True, rows=manifest.rows)
            raise ExtractCountMismatch(manifest.rows, source_count)
        await ledger.finish_phase(
            lease, Phase.SOURCE_TO_STAGE, rows=manifest.rows, manifest=manifest.to_json()
        )
    return manifest


async def _crashable(batches: AsyncIterator[pa.RecordBatch]) -> AsyncIterator[pa.RecordBatch]:
    """The source stream, with the `mid_extract` crash point after its first batch."""
    first = True
    async for batch in batches:
        yield batch
        if first:
            failpoints.hit("mid_extract")
            first = False
