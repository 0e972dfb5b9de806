"""write_parts: parts in order, uploads overlapping encoding but bounded, nothing abandoned."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ledgerflow.blocks.parquet_parts import Part, write_parts
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
