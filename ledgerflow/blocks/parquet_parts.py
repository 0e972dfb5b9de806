"""Arrow batches into size-bounded Parquet parts: the one writer both stages use.

Three things overlap, each bounded:
- encoding: a batch is encoded (in a thread; pyarrow releases the GIL) while the source produces
  the next one, so a source that decodes JSON on the event loop is not stalled by Parquet;
- publishing: a part is closed once it holds about `target_bytes` of Parquet and handed to
  `publish` (a rename for the local stage, an upload for S3), which runs while the next part is
  encoded, with at most `in_flight` publishes pending;
- memory: at most one batch waits while another is encoded, and one row group is buffered, so
  memory does not grow with the window. A batch becomes one row group unless it holds more than
  `ROW_GROUP_BYTES` of Arrow data: it is then cut into row groups of about that size, because a
  reader of the part (the DuckDB target's load above all) holds a whole row group at a time, and
  a source's fixed row count per batch (65,536 from DuckDB) is hundreds of MB for wide documents.
Dictionary encoding is kept for the columns where it pays (few distinct values in the first
batch) and skipped where it cannot (ids, timestamps, JSON documents): trying it there costs a
quarter of the encoding time and makes the files larger.
If anything fails, the encoding and the publishes already started are waited for, never
abandoned, so the caller's cleanup sees every part that reached the stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ledgerflow.ports import StagedFile

Publish = Callable[["Part"], Coroutine[Any, Any, StagedFile]]

# The most Arrow data one row group holds. At this size a row group of narrow rows holds
# hundreds of thousands of them (no narrow batch is cut), and the DuckDB target's load of a
# row group of 200 columns needs about 1.35 times it (`python -m bench duckdb`).
ROW_GROUP_BYTES = 32 * 2**20


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
    publish: Publish,
    compression: str = "zstd",
    workdir: str | None = None,
    in_flight: int = 2,
) -> list[StagedFile]:
    """Write `batches` as Parquet parts `{name_prefix}-00000.parquet`, ... and publish each."""
    parts = _Parts(name_prefix, target_bytes, publish, compression, workdir, in_flight)
    try:
        async for batch in batches:
            await parts.add(batch)
        return await parts.close()
    except BaseException:
        await parts.abandon()
        raise


@dataclass
class _Parts:
    name_prefix: str
    target_bytes: int
    publish: Publish
    compression: str
    workdir: str | None
    in_flight: int
    schema: pa.Schema | None = None
    dictionary: list[str] = field(default_factory=list)
    writer: pq.ParquetWriter | None = None
    path: str = ""
    rows: int = 0
    encoding: asyncio.Future[int] | None = None  # the batch being encoded: the part's size after
    publishing: list[asyncio.Task[StagedFile]] = field(default_factory=list)
    published: list[StagedFile] = field(default_factory=list)
    handed: list[str] = field(default_factory=list)  # files publish moves or deletes

    async def add(self, batch: pa.RecordBatch) -> None:
        if self.schema is None:
            self.schema = batch.schema
            self.dictionary = _repetitive_columns(batch)
        elif not batch.schema.equals(self.schema):
            batch = batch.cast(self.schema)  # raises a clear ArrowInvalid on a real schema change
        await self._settle()
        if self.writer is None:
            handle, self.path = tempfile.mkstemp(
                prefix=".writing-", suffix=".tmp", dir=self.workdir
            )
            os.close(handle)
            self.writer = pq.ParquetWriter(
                self.path,
                self.schema,
                compression=self.compression,
                use_dictionary=self.dictionary,
            )
        self.rows += batch.num_rows
        self.encoding = asyncio.ensure_future(
            asyncio.to_thread(_append, self.writer, batch, self.path)
        )

    async def close(self) -> list[StagedFile]:
        await self._settle()
        if self.writer is not None:
            await self._finish()
        while self.publishing:
            self.published.append(await self.publishing.pop(0))
        return self.published

    async def abandon(self) -> None:
        """After a failure: let started work end, then remove every local file left."""
        if self.encoding is not None:
            await asyncio.gather(self.encoding, return_exceptions=True)
        await asyncio.gather(*self.publishing, return_exceptions=True)
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        for leftover in [self.path, *self.handed] if self.path else self.handed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)  # only a failed publish leaves its part behind

    async def _settle(self) -> None:
        """Wait for the batch being encoded; close the part if it is big enough."""
        if self.encoding is None:
            return
        encoding, self.encoding = self.encoding, None
        if await encoding >= self.target_bytes:
            await self._finish()

    async def _finish(self) -> None:
        assert self.writer is not None
        await asyncio.to_thread(self.writer.close)
        index = len(self.published) + len(self.publishing)
        size = await asyncio.to_thread(os.path.getsize, self.path)
        part = Part(self.path, f"{self.name_prefix}-{index:05d}.parquet", self.rows, size)
        self.handed.append(self.path)
        self.writer, self.path, self.rows = None, "", 0  # the part is publish's now
        self.publishing.append(asyncio.create_task(self.publish(part)))
        while self.publishing and (
            len(self.publishing) >= self.in_flight or self.publishing[0].done()
        ):
            self.published.append(await self.publishing.pop(0))


def _repetitive_columns(batch: pa.RecordBatch) -> list[str]:
    """Columns with fewer distinct values than half their rows: worth a dictionary."""
    chosen = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            distinct = pc.count_distinct(column, mode="all").as_py()
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            distinct = 0  # a type count_distinct does not handle: leave it to Parquet
        if distinct * 2 <= max(len(column), 1):
            chosen.append(name)
    return chosen


def _append(writer: pq.ParquetWriter, batch: pa.RecordBatch, path: str) -> int:
    """Write one batch (one row group, or several of about `ROW_GROUP_BYTES` each) and return
    the part's size so far."""
    writer.write_batch(batch, row_group_size=_group_rows(batch))
    return os.path.getsize(path)


def _group_rows(batch: pa.RecordBatch) -> int:
    """The rows per row group that keep `batch`'s row groups within about `ROW_GROUP_BYTES`."""
    size, rows = int(batch.nbytes), int(batch.num_rows)  # nbytes: a slice's own share of buffers
    if size <= ROW_GROUP_BYTES or rows <= 1:
        return max(rows, 1)
    groups = -(-size // ROW_GROUP_BYTES)
    return -(-rows // groups)  # even groups: 65,536 rows in 3 is 21,846 each
