"""`LocalStage`: the embedded stage, a folder of Parquet parts per window."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from prefect.blocks.core import Block

from ledgerflow.blocks.checks import forbid_unknown_fields, in_range
from ledgerflow.blocks.parquet_parts import Part, write_parts
from ledgerflow.compat import Field
from ledgerflow.errors import StageError, StageTerminalError
from ledgerflow.ports import Manifest, StagedFile


class LocalStage(Block):
    """Stages each window as Parquet files under `{root}/{location}/`.

    Example:
        Load a saved stage:
        ```python
        from ledgerflow.blocks.local_stage import LocalStage

        stage = LocalStage.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Ledgerflow Local Stage"
    _block_type_slug = "ledgerflow-local-stage"
    _description = "Embedded stage: a local folder of Parquet parts per window."
    _known_fields = forbid_unknown_fields()

    root: str = Field(
        ".ledgerflow/stage",
        title="Root folder",
        description="Folder holding one folder per window.",
    )
    target_file_mb: float = Field(
        64.0, title="Part size (MB)", description="Parquet bytes per part."
    )

    _size = in_range("target_file_mb", 0.01, 4096)

    def folder(self, location: str) -> Path:
        root = Path(self.root).resolve()
        folder = (root / location).resolve()
        if root not in folder.parents:
            raise StageTerminalError(f"stage location {location!r} escapes the stage root {root}")
        return folder

    async def clear(self, location: str) -> None:
        folder = self.folder(location)
        await asyncio.to_thread(shutil.rmtree, folder, True)

    async def write(
        self, location: str, batches: AsyncIterator[pa.RecordBatch], *, name_prefix: str
    ) -> Manifest:
        folder = self.folder(location)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StageError(f"cannot create stage folder {folder}: {exc}") from exc

        published: list[Path] = []

        async def publish(part: Part) -> StagedFile:
            final = folder / part.name
            # A rename is atomic: a reader sees a whole part or none.
            await asyncio.to_thread(shutil.move, part.path, final)
            published.append(final)
            return StagedFile(str(final), part.rows, part.bytes)

        try:
            files = await write_parts(
                batches,
                name_prefix=name_prefix,
                target_bytes=int(self.target_file_mb * 1024 * 1024),
                publish=publish,
                workdir=str(folder),
            )
        except BaseException:
            # A failed write leaves nothing behind: no half window in the stage.
            for path in published:
                path.unlink(missing_ok=True)
            raise
        return Manifest(location, tuple(files))

    async def files(self, location: str) -> list[StagedFile]:
        folder = self.folder(location)

        def scan() -> list[StagedFile]:
            if not folder.is_dir():
                return []
            found = []
            for entry in sorted(folder.glob("*.parquet")):
                rows = pq.ParquetFile(entry).metadata.num_rows
                found.append(StagedFile(str(entry), rows, os.path.getsize(entry)))
            return found

        return await asyncio.to_thread(scan)
