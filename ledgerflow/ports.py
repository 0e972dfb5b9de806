"""The seams between the pipeline's tasks and the systems it moves data between.

Tasks see only these Protocols; blocks implement them. Data moves as `pyarrow.RecordBatch`
streams, so memory stays bounded whatever a window's size.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

import pyarrow as pa

from ledgerflow.windows import Window


@dataclass(frozen=True)
class StagedFile:
    """One staged file: where it is (a URI the target can read), its rows and bytes."""

    uri: str
    rows: int
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """What the stage holds for one window, as written by `Stage.write`."""

    location: str
    files: tuple[StagedFile, ...] = field(default_factory=tuple)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_json(self) -> str:
        return json.dumps({"location": self.location, "files": [asdict(f) for f in self.files]})

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(data["location"], tuple(StagedFile(**f) for f in data["files"]))

    def matches(self, found: Sequence[StagedFile]) -> bool:
        """True when `found` (a listing of the stage) holds exactly these files, byte for byte."""
        return {(f.uri, f.bytes) for f in found} == {(f.uri, f.bytes) for f in self.files}


@runtime_checkable
class Source(Protocol):
    """Where the data comes from."""

    async def count(self, window: Window) -> int:
        """Exact number of records whose timestamp lies in `[window.start, window.end)`."""
        ...

    def extract(self, window: Window) -> AsyncIterator[pa.RecordBatch]:
        """Stream the window's records as bounded-size Arrow batches."""
        ...


@runtime_checkable
class Stage(Protocol):
    """Where a window's data waits between extraction and loading."""

    async def clear(self, location: str) -> None:
        """Remove everything under the window's location."""
        ...

    async def write(
        self, location: str, batches: AsyncIterator[pa.RecordBatch], *, name_prefix: str
    ) -> Manifest:
        """Write the batches as files under `location` (names start with `name_prefix`)."""
        ...

    async def files(self, location: str) -> list[StagedFile]:
        """List what is staged under `location` (rows are 0 where the listing cannot know)."""
        ...


@runtime_checkable
class Target(Protocol):
    """Where the data lands."""

    async def count(self, window: Window) -> int:
        """Number of rows whose timestamp lies in `[window.start, window.end)`."""
        ...

    async def replace(self, window: Window, manifest: Manifest) -> int:
        """Atomically delete the window's rows and load the manifest's files; return rows loaded.

        Either the whole window is replaced or nothing changes.
        """
        ...
