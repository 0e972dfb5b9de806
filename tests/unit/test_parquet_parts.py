"""write_parts: parts in order, uploads overlapping encoding but bounded, nothing abandoned."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from ledgerflow.blocks.parquet_parts import ROW_GROUP_BYTES, Part, write_parts
from ledgerflow.ports import StagedFile


async def batches(n: int, rows: int = 20_000) -> AsyncIterator[pa.RecordBatch]:
    for i in range(n):
        ids = [f"{i}-{j}-{os.urandom(4).hex()}" for j in range(rows)]  # incompressible
        yield pa.RecordBatch.from_pydict({"_id": ids, "n": list(range(rows))})


class Publisher:
    """Moves parts into a folder slowly, recording how many run at once."""

    def __init__(self, folder: Path, fail_at: int | None = None) -> None:
        self.folder, self.fail_at = folder, fail_at
        self.running = self.most = self.finished = 0
        self.overlapped = asyncio.Event()

    async def __call__(self, part: Part) -> StagedFile:
        self.running += 1
        self.most = max(self.most, self.running)
        if self.running > 1:
            self.overlapped.set()
        try:
            if self.finished == 0 and self.running == 1:
                # The first upload stays busy until a second one starts, so the overlap is seen
                # even when a busy machine encodes the next part slower than an upload takes.
                # Generous (why: a loaded machine); a writer that never overlaps waits it out.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.overlapped.wait(), 30)
            await asyncio.sleep(0.05)
            if self.fail_at is not None and part.name.endswith(f"{self.fail_at:05d}.parquet"):
                raise ConnectionError("upload refused")
            os.replace(part.path, self.folder / part.name)
            return StagedFile(str(self.folder / part.name), part.rows, part.bytes)
        finally:
            self.running -= 1
            self.finished += 1


async def test_parts_keep_their_order_and_at_most_two_publishes_overlap(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir(), work.mkdir()
    publish = Publisher(out)
    files = await write_parts(
        batches(8), name_prefix="part", target_bytes=1, publish=publish, workdir=str(work)
    )
    assert [Path(f.uri).name for f in files] == [f"part-{i:05d}.parquet" for i in range(8)]
    assert sum(f.rows for f in files) == 8 * 20_000
    assert [pq.read_metadata(f.uri).num_rows for f in files] == [20_000] * 8
    assert publish.most == 2
    assert list(work.iterdir()) == []


async def test_a_failed_publish_waits_for_the_others_and_leaves_no_temp_files(
    tmp_path: Path,
) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir(), work.mkdir()
    publish = Publisher(out, fail_at=3)
    with pytest.raises(ConnectionError, match="upload refused"):
        await write_parts(
            batches(8), name_prefix="part", target_bytes=1, publish=publish, workdir=str(work)
        )
    assert publish.running == 0  # nothing still uploading when the error reached the caller
    assert list(work.iterdir()) == []


async def one(batch: pa.RecordBatch) -> AsyncIterator[pa.RecordBatch]:
    yield batch


async def test_a_wide_batch_is_cut_into_row_groups_a_reader_can_hold(tmp_path: Path) -> None:
    """65,536 rows of 120 float columns (60 MiB of Arrow data, as a DuckDB source's batch of wide
    documents) become row groups of at most about ROW_GROUP_BYTES, in order, nothing lost; a
    narrow batch stays one row group."""
    rows, width = 65_536, 120
    base = pc.cast(pa.array(range(rows)), pa.float64())
    wide = pa.RecordBatch.from_pydict(
        {"_id": pc.cast(base, pa.string())}
        | {f"c{j}": pc.multiply(base, float(j)) for j in range(width)}
    )
    assert wide.nbytes > ROW_GROUP_BYTES * 1.5
    [narrow] = [b async for b in batches(1, rows=rows)]
    for batch, groups in ((wide, 2), (narrow, 1), (wide.slice(1000, 30_000), 1)):
        out = tmp_path / f"out-{batch.num_columns}-{batch.num_rows}"
        out.mkdir()

        async def move(part: Part, out: Path = out) -> StagedFile:
            os.replace(part.path, out / part.name)
            return StagedFile(str(out / part.name), part.rows, part.bytes)

        [file] = await write_parts(one(batch), name_prefix="part", target_bytes=2**40, publish=move)
        meta = pq.ParquetFile(file.uri).metadata
        sizes = [meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)]
        assert meta.num_row_groups == groups, sizes
        assert max(sizes) <= ROW_GROUP_BYTES * 1.1, sizes
        assert pq.read_table(file.uri).equals(pa.Table.from_batches([batch]))
