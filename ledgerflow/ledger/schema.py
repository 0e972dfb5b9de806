"""Creating the ledger's schema, upgrading an older one in place, and checking its version."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ledgerflow.errors import LedgerSchemaError
from ledgerflow.ledger import migrations
from ledgerflow.ledger.base import LedgerBase
from ledgerflow.ledger.models import (
    FENCE_COUNTERS,
    PIPELINES,
    RECORDS,
    SCHEMA_VERSION,
    SchemaVersion,
)
from ledgerflow.ledger.sql import _clock, _insert_ignoring_version

COMPONENT = "pipeline_records"
_VERSIONS: sa.Table = SchemaVersion.__table__  # type: ignore[attr-defined]
_TABLES = [RECORDS, PIPELINES, FENCE_COUNTERS, _VERSIONS]
"""Every table the ledger owns, in creation order."""
_SCHEMA_LOCK = 0x1EDF10
"""The Postgres advisory lock key that serialises schema creation and upgrades."""


class SchemaMixin(LedgerBase):
    async def create_schema(self) -> list[int]:
        """Create the schema at this ledgerflow's version, or upgrade an older one in place.

        Safe to run again and from several workers at once: the check and the upgrade run in one
        transaction under a lock (a transaction-scoped advisory lock on Postgres, SQLite's write
        lock), so one migrates and the others find it done. Returns the versions applied (empty
        when the schema was already current or was created fresh).
        """
        async with self._begin() as conn:
            await self._lock_schema(conn)
            found = await self._stored_version(conn)
            if found is None:
                await conn.run_sync(
                    lambda sync: SchemaVersion.metadata.create_all(sync, tables=_TABLES)
                )
                await self._stamp_version(conn, SCHEMA_VERSION, insert=True)
                return []
            if found > SCHEMA_VERSION:
                raise _version_error(found)
            if found == SCHEMA_VERSION:
                await conn.run_sync(migrations.repair)  # an earlier build of this version's
                return []
            applied = await conn.run_sync(
                lambda sync: migrations.upgrade(sync, found, SCHEMA_VERSION)
            )
            await self._stamp_version(conn, SCHEMA_VERSION, insert=False)
            return applied

    async def check_schema(self) -> None:
        """Raise LedgerSchemaError unless the schema exists at this ledgerflow's version."""
        async with self._connect() as conn:
            found = await self._stored_version(conn)
        if found is None:
            raise LedgerSchemaError(
                "the ledger has no ledgerflow schema yet; run `ledgerflow init` "
                "(or Ledger.create_schema()) once"
            )
        if found != SCHEMA_VERSION:
            raise _version_error(found)
        async with self._connect() as conn:
            missing = await conn.run_sync(migrations.missing_tables)
        if missing:
            raise LedgerSchemaError(
                f"the ledger lacks table(s) {', '.join(missing)} of schema version {found} (made "
                "by an earlier build of it); run `ledgerflow init` to add them"
            )

    async def _lock_schema(self, conn: AsyncConnection) -> None:
        if self.dialect == "postgresql":
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
        else:
            # pysqlite opens no transaction before DDL; take the write lock now, so a second
            # process waits here (busy_timeout) instead of migrating the same tables again.
            await conn.exec_driver_sql("BEGIN IMMEDIATE")

    @staticmethod
    async def _stored_version(conn: AsyncConnection) -> int | None:
        """The stamped version, or None when the ledger has no ledgerflow tables yet."""
        has = await conn.run_sync(lambda sync: sa.inspect(sync).has_table(_VERSIONS.name))
        if not has:
            return None
        found = await conn.scalar(
            sa.select(_VERSIONS.c.version).where(_VERSIONS.c.component == COMPONENT)
        )
        return None if found is None else int(found)

    async def _stamp_version(self, conn: AsyncConnection, version: int, *, insert: bool) -> None:
        values = {"version": version, "applied_at": _clock(self.dialect)}
        if insert:
            await conn.execute(
                _insert_ignoring_version(self.dialect, _VERSIONS).values(
                    component=COMPONENT, **values
                )
            )
        else:
            await conn.execute(
                sa.update(_VERSIONS).where(_VERSIONS.c.component == COMPONENT).values(**values)
            )


def _version_error(found: int | None) -> LedgerSchemaError:
    if found is not None and found > SCHEMA_VERSION:
        return LedgerSchemaError(
            f"the ledger's schema is version {found}, newer than this ledgerflow understands "
            f"({SCHEMA_VERSION}); upgrade ledgerflow"
        )
    return LedgerSchemaError(
        f"the ledger's schema is version {found}, this ledgerflow needs {SCHEMA_VERSION}; "
        "run `ledgerflow init` to migrate"
    )
