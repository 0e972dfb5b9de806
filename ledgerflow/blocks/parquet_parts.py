"""Arrow batches into size-bounded Parquet parts: the one writer both stages use.

A part is closed once it holds about `target_bytes` of Parquet, so memory stays at one row group
however large the window is. Each finished part is handed to `publish` (a rename for the local
stage, an upload for S3), which runs while the next part is encoded: the upload of part N overlaps
the encoding of part N+1, with at most `in_flight` publishes pending (so at most that many
finished parts wait on disk). If anything fails, the publishes in flight are waited for, never
abandoned, so the caller's cleanup sees every part that reached the stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ledgerflow.ports import StagedFile


@dataclass(frozen=True)
class Part:
    """A finished part on local disk, waiting to be published under `name`."""

    path: str
    name: str
    rows: int
    bytes: int


async def write_parts(
    batches: AsyncIterator[pa.RecordBatch],
    *,
    name_prefix: str,
    target_bytes: int,
    publish: Callable[[Part], Coroutine[Any, Any, StagedFile]],
    compression: str = "zstd",
    workdir: str | None = None,
    in_flight: int = 2,
) -> list[StagedFile]:
    """Write `batches` as Parquet parts `{name_prefix}-00000.parquet`, ... and publish each."""
    pending: list[asyncio.Task[StagedFile]] = []
    done: list[StagedFile] = []
    handed: list[str] = []  # part files given to publish, which moves or deletes them
    writer: pq.ParquetWriter | None = None
    handle: int | None = None
    path = ""
    rows = 0
    schema: pa.Schema | None = None

    async def finish() -> None:
        nonlocal writer, rows, path
        assert writer is not None
        await asyncio.to_thread(writer.close)
        name = f"{name_prefix}-{len(done) + len(pending):05d}.parquet"
        size = await asyncio.to_thread(os.path.getsize, path)
        part = Part(path, name, rows, size)
        handed.append(path)
        writer, rows, path = None, 0, ""  # the part is publish's now
        pending.append(asyncio.create_task(publish(part)))
        while len(pending) >= in_flight or (pending and pending[0].done()):
            done.append(await pending.pop(0))

    try:
        async for batch in batches:
            if schema is None:
                schema = batch.schema
            elif not batch.schema.equals(schema):
                batch = batch.cast(schema)  # raises a clear ArrowInvalid on a real schema change
            if writer is None:
                handle, path = tempfile.mkstemp(prefix=".writing-", suffix=".tmp", dir=workdir)
                os.close(handle)
                writer = pq.ParquetWriter(path, schema, compression=compression)
            written = await asyncio.to_thread(_append, writer, batch, path)
            rows += batch.num_rows
            if written >= target_bytes:
                await finish()
        if writer is not None:
            await finish()
        while pending:
            done.append(await pending.pop(0))
    except BaseException:
        # Let every started publish end (an upload thread cannot be stopped half way), so the
        # caller's cleanup knows each part that reached the stage.
        await asyncio.gather(*pending, return_exceptions=True)
        raise
    finally:
        if writer is not None:
            writer.close()
        for leftover in [path, *handed] if path else handed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)  # only a failed publish leaves its part behind
    return done


def _append(writer: pq.ParquetWriter, batch: pa.RecordBatch, path: str) -> int:
    """Write one batch (one row group) and return the part's size so far."""
    writer.write_batch(batch)
    return os.path.getsize(path)
