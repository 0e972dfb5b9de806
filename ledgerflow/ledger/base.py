"""What every part of the `Ledger` shares: its engines, its connections, and the methods one
part calls on another (declared here for the type checker, defined by the part that owns them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledgerflow.ledger.engine import _Guarded, make_engine
from ledgerflow.ledger.models import RECORDS, PipelineRecord
from ledgerflow.ledger.sql import _as_utc

if TYPE_CHECKING:
    from ledgerflow.ledger.leases import Lease
    from ledgerflow.ledger.status import TilingFault


class LedgerBase:
    """The engines and connections of a ledger. Construct with an engine, or `from_url(url)`."""

    def __init__(self, engine: AsyncEngine, autocommit: AsyncEngine | None = None) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._autocommit = autocommit or engine.execution_options(isolation_level="AUTOCOMMIT")

    @classmethod
    def from_url(cls, url: str, *, pool_size: int = 5, pooled: bool = True) -> Self:
        """`pooled=False` opens a connection per operation and keeps none idle."""
        # Two engines: switching one connection's isolation level per checkout costs round trips.
        return cls(
            make_engine(url, pool_size=pool_size, pooled=pooled),
            make_engine(url, pool_size=pool_size, autocommit=True, pooled=pooled),
        )

    async def close(self) -> None:
        await self.engine.dispose()
        await self._autocommit.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _begin(self) -> _Guarded:
        return _Guarded(self.engine, begin=True)

    def _connect(self) -> _Guarded:
        return _Guarded(self.engine, begin=False)

    def _autocommitted(self) -> _Guarded:
        """A connection in autocommit mode, for one statement (atomic on its own): no
        BEGIN/COMMIT round trips on the hot path."""
        return _Guarded(self._autocommit, begin=False)

    @staticmethod
    async def _first_start(conn: AsyncConnection, pipeline_id: str) -> datetime | None:
        """Start of the pipeline's first registered window."""
        value = await conn.scalar(
            sa.select(sa.func.min(RECORDS.c.window_start_time)).where(
                RECORDS.c.pipeline_id == pipeline_id
            )
        )
        return _as_utc(value)

    if TYPE_CHECKING:  # defined by the parts that own them, used by others

        async def update(
            self,
            lease: Lease,
            action: str,
            values: Mapping[str, Any],
            *,
            now: datetime | None = None,
        ) -> PipelineRecord: ...

        async def complete(
            self,
            lease: Lease,
            values: Mapping[str, Any] | None = None,
            *,
            now: datetime | None = None,
        ) -> PipelineRecord: ...

        async def fail(
            self,
            lease: Lease,
            error: str,
            values: Mapping[str, Any] | None = None,
            *,
            now: datetime | None = None,
        ) -> PipelineRecord: ...

        async def windows(
            self,
            pipeline_id: str,
            *,
            statuses: Sequence[str] | None = None,
            start: datetime | None = None,
            end: datetime | None = None,
            limit: int | None = None,
            newest_first: bool = False,
        ) -> list[PipelineRecord]: ...

        async def tiling_faults(
            self, pipeline_id: str, *, limit: int = 100
        ) -> list[TilingFault]: ...
