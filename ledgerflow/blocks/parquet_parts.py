"""Arrow batches into size-bounded Parquet parts: the one writer both stages use.

A part is closed once it holds about `target_bytes` of Parquet, so memory stays at one row group
however large the window is. Each finished part is handed to `publish` (a rename for the local
stage, an upload for S3) before the next one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

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
    publish: Callable[[Part], Awaitable[StagedFile]],
    compression: str = "zstd",
    workdir: str | None = None,
) -> list[StagedFile]:
    """Write `batches` as Parquet parts `{name_prefix}-00000.parquet`, ... and publish each."""
    published: list[StagedFile] = []
    writer: pq.ParquetWriter | None = None
    handle: int | None = None
    path = ""
    rows = 0
    schema: pa.Schema | None = None

    async def finish() -> None:
        nonlocal writer, rows
        assert writer is not None
        await asyncio.to_thread(writer.close)
        name = f"{name_prefix}-{len(published):05d}.parquet"
        size = await asyncio.to_thread(os.path.getsize, path)
        published.append(await publish(Part(path, name, rows, size)))
        writer, rows = None, 0

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
    finally:
        if writer is not None:
            writer.close()
        if path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return published


def _append(writer: pq.ParquetWriter, batch: pa.RecordBatch, path: str) -> int:
    """Write one batch (one row group) and return the part's size so far."""
    writer.write_batch(batch)
    return os.path.getsize(path)
