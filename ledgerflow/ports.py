"""The seams between the pipeline's tasks and the systems it moves data between.

Tasks see only these Protocols; blocks implement them. Data moves as `pyarrow.RecordBatch`
streams, so memory stays bounded whatever a window's size.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pyarrow as pa

from ledgerflow.windows import Window

if TYPE_CHECKING:
    from ledgerflow.ledger import Ledger


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
    fingerprint: str | None = None
    """The source's `Source.fingerprint` of the window when it was staged (None: unknown, so
    the stage is never resumed)."""

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_json(self) -> str:
        return json.dumps(
            {
                "location": self.location,
                "files": [asdict(f) for f in self.files],
                "fingerprint": self.fingerprint,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        files = tuple(StagedFile(**f) for f in data["files"])
        return cls(data["location"], files, data.get("fingerprint"))

    def matches(self, found: Sequence[StagedFile]) -> bool:
        """True when `found` (a listing of the stage) holds exactly these files, byte for byte."""
        return {(f.uri, f.bytes) for f in found} == {(f.uri, f.bytes) for f in self.files}


@dataclass(frozen=True)
class Fence:
    """The fencing token of one claim of one window (Kleppmann's "How to do distributed locking").

    The ledger draws `token` for every claim from one counter per pipeline, so a later claim
    always carries a greater number than any earlier claim of any window of the pipeline
    (windows cut on two grids overlap after a re-tile). The target records, per (pipeline_id,
    window_start), the greatest token it has seen with the window's end and the table, and
    refuses a load carrying a smaller one than any overlapping window's.
    """

    pipeline_id: str
    window_start: datetime
    token: int


@runtime_checkable
class Source(Protocol):
    """Where the data comes from."""

    async def count(self, window: Window) -> int:
        """Exact number of records whose timestamp lies in `[window.start, window.end)`."""
        ...

    def extract(self, window: Window) -> AsyncIterator[pa.RecordBatch]:
        """Stream the window's records as bounded-size Arrow batches."""
        ...

    async def fingerprint(self, window: Window) -> str | None:
        """A short text that changes whenever the window's records change: one added, deleted
        or edited in place, even when the count stays the same. Cheap (an aggregate the source
        computes, no rows moved). None when this source cannot tell; then a staged window is
        never trusted on resume and is extracted again."""
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

    def identity(self) -> str:
        """Where this target's rows land, as one stable text without any secret (for example
        `duckdb:/abs/warehouse.duckdb#web_events`). The ledger records it per pipeline and
        refuses a run whose target says otherwise: the windows loaded before are in the old
        place, and a run into a new one would hold only part of what the ledger calls loaded.
        Two spellings of one place should give one text; a place named two ways is refused
        until an operator runs `ledgerflow retarget`."""
        ...

    async def count(self, window: Window, pipeline_id: str) -> int:
        """Number of rows whose timestamp lies in `[window.start, window.end)`, as pipeline
        `pipeline_id` sees them.

        Refuse with `TableOwnedByAnotherPipeline` (reading nothing) when the table's fence rows
        (see `replace`) name another pipeline: those rows are not this pipeline's, and counting
        them would let pre-validation skip, or the audit pass, a window that was never loaded
        (the counts would compare this pipeline's source with another pipeline's rows). No
        fence rows yet (nothing loaded): count as usual.
        """
        ...

    async def replace(self, window: Window, manifest: Manifest, fence: Fence) -> int:
        """Atomically delete the window's rows and load the manifest's files; return rows loaded.

        Either the whole window is replaced or nothing changes. In that one transaction:

        1. First statement: advance a fence row keyed by (`fence.pipeline_id`,
           `fence.window_start`), holding `window.end` and the table, to `fence.token`,
           inserting it if missing, unless a greater token is recorded for it or for any row of
           the pipeline whose window overlaps `[window.start, window.end)`; then abort, writing
           nothing, and raise `FencedOut`. An equal token is the same claim retrying and goes
           on. The row must be written (not only read) so that two transactions fencing one
           window cannot both commit: the storage's row or table lock, or its write-write
           conflict, stops the second; and two overlapping windows' transactions must not both
           commit unseen by each other either (a table lock, or a re-check at commit). Refuse,
           writing nothing, a table whose fence rows name another pipeline
           (`TableOwnedByAnotherPipeline`): one pipeline per target table.
        2. Delete the window's rows and load the files.
        3. Before commit, check that every loaded row's timestamp lies in
           `[window.start, window.end)` (none NULL); otherwise abort and raise
           `RowsOutsideWindow`. Check the loaded count equals `manifest.rows`
           (`LoadCountMismatch`).

        If the awaiting task is cancelled (the lease was lost), interrupt the running statement
        where the driver allows it; whatever happens then, the fence decides.
        """
        ...


@runtime_checkable
class LedgerProvider(Protocol):
    """Where tasks get a Ledger (the LedgerDatabase block)."""

    def open(self) -> contextlib.AbstractAsyncContextManager[Ledger]:
        """A Ledger for one task run, closed when the block exits."""
        ...

    async def prepare(self) -> None:
        """Create or check the ledger schema."""
        ...


@dataclass(frozen=True)
class Systems:
    """The systems one pipeline run talks to, seen through their Protocols (built by
    `ledgerflow.wiring`)."""

    ledger: LedgerProvider
    source: Source
    stage: Stage
    target: Target
