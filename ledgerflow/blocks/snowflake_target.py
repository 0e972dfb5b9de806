"""`SnowflakeTarget`: a window replaced atomically with COPY INTO from an external S3 stage.

It composes prefect-snowflake's `SnowflakeConnector` (and through it `SnowflakeCredentials`).
`replace` runs, on one connection with autocommit off: DELETE the window's rows; COPY INTO the
window's staged files (FORCE-d); check that the rows loaded equal the manifest; stamp the window
start and load time; COMMIT. Any error rolls back explicitly: in Snowflake a failed statement does
not roll back its transaction by itself (the way airbytehq/airbyte#46936 lost data). All
connector calls run in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from prefect.blocks.core import Block
from prefect_snowflake.database import SnowflakeConnector
from snowflake.connector import errors as sf_errors

from ledgerflow import failpoints
from ledgerflow.blocks import snowflake_sql as sql
from ledgerflow.blocks.checks import client_settings, forbid_unknown_fields
from ledgerflow.blocks.interrupt import Interrupt, in_thread
from ledgerflow.blocks.nested import revalidated
from ledgerflow.blocks.snowflake_errors import target_error
from ledgerflow.clock import utc_now
from ledgerflow.compat import Field, validator
from ledgerflow.errors import (
    FencedOut,
    LoadCountMismatch,
    RowsOutsideWindow,
    TableOwnedByAnotherPipeline,
    TargetError,
    TargetTerminalError,
)
from ledgerflow.ports import Fence, Manifest
from ledgerflow.sqlident import quote_identifier
from ledgerflow.windows import Window

T = TypeVar("T")
# Tables this process created (or found), by account, host, database, schema and table, and the
# lock its creators take turns under: a window's load need not create its table again.
_created_tables: set[tuple[str, ...]] = set()
_creating_tables = threading.Lock()


class SnowflakeTarget(Block):
    """Loads staged Parquet windows into a Snowflake table through an external S3 stage.

    Example:
        Load a saved target:
        ```python
        from ledgerflow.blocks.snowflake_target import SnowflakeTarget

        target = SnowflakeTarget.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Ledgerflow Snowflake Target"
    _block_type_slug = "ledgerflow-snowflake-target"
    _description = (
        "Replace each window in a Snowflake table atomically (composes SnowflakeConnector)."
    )
    _known_fields = forbid_unknown_fields()

    connector: SnowflakeConnector = Field(
        ..., title="Connector", description="A prefect-snowflake SnowflakeConnector block."
    )
    table: str = Field(..., title="Table", description="Target table (optionally SCHEMA.TABLE).")
    timestamp_column: str = Field("TS", title="Timestamp column", description="Places a row.")
    stage: str = Field(
        ..., title="Stage", description="External stage over the S3 stage, e.g. LEDGERFLOW_STAGE."
    )
    stage_url: str = Field(
        ...,
        title="Stage URL",
        description="The S3 URL the stage points at, e.g. s3://bucket/ledgerflow/.",
    )
    create_table: bool = Field(
        False, title="Create table", description="Create the documented default table if missing."
    )
    load_columns: list[str] | None = Field(
        list(sql.DEFAULT_COLUMNS),
        title="Load columns",
        description="Columns loaded by name from the Parquet files; unset matches all by name.",
    )
    json_columns: list[str] = Field(
        ["DOCUMENT"], title="JSON columns", description="Loaded with PARSE_JSON into VARIANT."
    )
    window_start_column: str | None = Field(
        "WINDOW_START", title="Window start column", description="Stamped on load; unset: none."
    )
    loaded_at_column: str | None = Field(
        "LOADED_AT", title="Loaded at column", description="Stamped on load; unset: none."
    )
    lock_timeout_seconds: int = Field(
        300,
        title="Lock timeout (s)",
        description=(
            "How long a load waits for a table lock (Snowflake's LOCK_TIMEOUT, default 12 h) "
            "before failing and being retried."
        ),
        ge=1,
    )
    connect_args: dict[str, Any] = Field(
        default_factory=dict,
        title="Connect args",
        description="Extra snowflake.connector.connect arguments (e.g. login_timeout).",
    )

    @validator("table", "timestamp_column", "window_start_column", "loaded_at_column")
    def _identifier(cls, v: str | None, field: Any) -> str | None:
        if v is not None:
            quote_identifier(v, field=field.name)
        return v

    @validator("stage")
    def _stage(cls, v: str) -> str:
        quote_identifier(v.lstrip("@"), field="stage")
        return v.lstrip("@")

    @validator("stage_url")
    def _stage_url(cls, v: str) -> str:
        if not v.startswith("s3://"):
            raise ValueError(f"stage_url={v!r} must be the stage's s3:// URL")
        return v if v.endswith("/") else v + "/"

    # --- Target protocol ----------------------------------------------------------------------

    def identity(self) -> str:
        """The account (and host, where one is set), and the table qualified by the connector's
        database and schema where its name does not give them: the table's names are quoted,
        so their case counts, as it does in Snowflake."""
        account, host, database, schema, table = self._table_key(self.table)
        parts = table.split(".")
        qualified = [database, schema][: 3 - len(parts)] + parts
        where = account + (f"@{host}" if host else "")
        return f"snowflake:{where}/{'.'.join(qualified)}"

    async def count(self, window: Window, pipeline_id: str) -> int:
        def run(cur: Any) -> int:
            self._check_owner(cur, pipeline_id)
            try:
                cur.execute(sql.count_sql(self.table, self.timestamp_column), _bounds(window))
            except sf_errors.ProgrammingError as exc:
                if exc.errno == 2003 and not self._table_exists(cur):
                    return 0  # nothing loaded yet
                raise
            return int(cur.fetchone()[0])

        return await self._session(run, "count", transactional=False)

    async def replace(self, window: Window, manifest: Manifest, fence: Fence) -> int:
        files = [self._relative(f.uri) for f in manifest.files]
        failpoints.hit("before_target_txn")  # after the last ledger write, before connecting

        def run(cur: Any) -> int:
            # First: a newer claim that reached the target already makes this a no-op.
            self._advance_fence(cur, fence, window.end)
            cur.execute(sql.delete_sql(self.table, self.timestamp_column), _bounds(window))
            failpoints.hit("mid_load")  # inside the transaction, after the DELETE
            loaded = self._copy(cur, files) if files else 0
            if loaded != manifest.rows:
                raise LoadCountMismatch(loaded, manifest.rows)
            self._check_inside(cur, window, loaded)
            stamp = sql.stamp_sql(
                self.table, self.timestamp_column, self.window_start_column, self.loaded_at_column
            )
            if stamp and loaded:
                values = [
                    v
                    for v, c in (
                        (window.start, self.window_start_column),
                        (utc_now(), self.loaded_at_column),
                    )
                    if c
                ]
                cur.execute(stamp, (*values, *_bounds(window)))
            return loaded

        if self.create_table:
            await self._create_once(self.table, self._create_table_sql, "create table")
        fences = sql.fence_table(self.table)
        await self._create_once(
            fences,
            lambda: [sql.create_fence_table_sql(fences), *sql.add_fence_columns_sql(fences)],
            "create fence table",
        )
        return await self._session(run, "replace", transactional=True)

    def _advance_fence(self, cur: Any, fence: Fence, end: datetime) -> None:
        """Record `fence.token` for the window unless a greater one is recorded for it or for
        any window of the pipeline overlapping [start, end) (FencedOut), and refuse a table
        whose fence rows name another pipeline (TableOwnedByAnotherPipeline). Either refusal
        rolls the transaction back: nothing is written.

        The MERGE always writes the row, so it takes the fence table's lock: a second
        transaction fencing any window waits (LOCK_TIMEOUT) until the first ends, then sees
        its row. So two loads of one window or of overlapping windows cannot both commit, and
        two pipelines cannot both take one table.
        """
        fences = sql.fence_table(self.table)
        table = self._owned_name()
        cur.execute(
            sql.advance_fence_sql(fences),
            (fence.pipeline_id, fence.window_start, end, table, fence.token),
        )
        cur.execute(
            sql.read_fence_sql(fences),
            (fence.pipeline_id, end, fence.window_start, table, fence.pipeline_id),
        )
        found = cur.fetchone()
        recorded, owner = (found[0], found[1]) if found else (None, None)
        if owner is not None:
            raise TableOwnedByAnotherPipeline(
                f"{self.table!r} (Snowflake schema of {fences})", str(owner), fence.pipeline_id
            )
        recorded = -1 if recorded is None else int(recorded)
        if recorded != fence.token:
            raise FencedOut(
                fence.pipeline_id, fence.window_start.isoformat(), fence.token, recorded
            )

    def _check_owner(self, cur: Any, pipeline_id: str) -> None:
        """Refuse (TableOwnedByAnotherPipeline) when another pipeline's fence rows name the
        table: its rows are not this pipeline's to count."""
        fences = sql.fence_table(self.table)
        try:
            cur.execute(sql.owner_sql(fences), (self._owned_name(), pipeline_id))
        except sf_errors.ProgrammingError as exc:
            if exc.errno == 2003:
                return  # no fence table yet: nothing loaded yet, by anyone
            raise
        found = cur.fetchone()
        if found and found[0] is not None:
            raise TableOwnedByAnotherPipeline(
                f"{self.table!r} (Snowflake schema of {fences})", str(found[0]), pipeline_id
            )

    def _owned_name(self) -> str:
        """How the fence rows name the table: its own name, in the schema the fence table is
        in (Snowflake matches quoted names case-sensitively, and every name here is quoted)."""
        return self.table.rpartition(".")[2]

    def _check_inside(self, cur: Any, window: Window, loaded: int) -> None:
        """Every loaded row lies in the window: it was emptied first in this transaction, so it
        now holds exactly the loaded rows that belong to it."""
        if not loaded:
            return
        cur.execute(sql.count_sql(self.table, self.timestamp_column), _bounds(window))
        outside = loaded - int(cur.fetchone()[0])
        if not outside:
            return
        example = "unknown: set loaded_at_column to see one"
        if self.loaded_at_column:
            # Rows this COPY loaded are the only ones not stamped with a load time yet.
            cur.execute(
                sql.outside_example_sql(self.table, self.timestamp_column, self.loaded_at_column),
                _bounds(window),
            )
            found = cur.fetchone()
            example = "NULL" if found is None or found[0] is None else str(found[0])
        raise RowsOutsideWindow(
            outside, loaded, window.start, window.end, f"{self.timestamp_column}={example}"
        )

    # --- steps (separate so a test can fail one between DELETE and COMMIT) -------------------

    def _copy(self, cur: Any, files: list[str]) -> int:
        cur.execute(
            sql.copy_sql(self.table, self.stage, files, self.load_columns, self.json_columns)
        )
        names = [d[0].lower() for d in cur.description]
        results = [dict(zip(names, row, strict=False)) for row in cur.fetchall()]
        bad = [r for r in results if str(r.get("status", "")).upper() not in ("LOADED",)]
        if bad:
            raise TargetTerminalError(
                f"COPY INTO {self.table} did not load {len(bad)} file(s): "
                + "; ".join(
                    f"{r.get('file')}: {r.get('status')} {r.get('first_error') or ''}"
                    for r in bad[:3]
                )
            )
        return sum(int(r.get("rows_loaded") or 0) for r in results)

    def _create_table_sql(self) -> str:
        return sql.create_table_sql(
            self.table, self.timestamp_column, self.window_start_column, self.loaded_at_column
        )

    async def _create_once(
        self, table: str, ddl: Callable[[], str | list[str]], action: str
    ) -> None:
        """Run `ddl()` (a CREATE TABLE IF NOT EXISTS) in its own session, once per process and
        table, before the window's load: a session costs a login, and the load's transaction
        then holds no DDL.

        This process's windows take turns, so they never race to create it. Workers in other
        processes still may: a concurrent CREATE TABLE IF NOT EXISTS can conflict (the emulator
        answers a write-write conflict), and the table exists once one of them wins, so a
        conflict is retried once here rather than costing the window a task retry.
        """
        key = self._table_key(table)
        if key in _created_tables:
            return

        def create(cur: Any) -> None:
            with _creating_tables:
                if key not in _created_tables:
                    statements = ddl()
                    for statement in [statements] if isinstance(statements, str) else statements:
                        cur.execute(statement)
                    _created_tables.add(key)

        # Not interruptible: a lease lost meanwhile abandons the window's load, not this DDL (it
        # writes no rows, and nothing needs telling how it ended).
        try:
            await self._session(create, action, transactional=False, interruptible=False)
        except TargetError:
            await self._session(create, action, transactional=False, interruptible=False)

    def _table_key(self, table: str) -> tuple[str, ...]:
        """Where `table` is: the account (`connect_args` may override the credentials' one, as
        `get_client` lets it), the host, and the session's database and schema as Snowflake
        resolves them (a connection's unquoted database and schema are upper case)."""
        account = self.connect_args.get("account") or self.connector.credentials.account
        return (
            str(account).lower(),
            str(self.connect_args.get("host", "")),
            _session_name(self.connector.database),
            _session_name(self.connector.schema_),
            table,
        )

    def _table_exists(self, cur: Any) -> bool:
        try:
            cur.execute(f"SELECT 1 FROM {quote_identifier(self.table)} LIMIT 0")
        except sf_errors.ProgrammingError:
            return False
        return True

    def _relative(self, uri: str) -> str:
        if not uri.startswith(self.stage_url):
            raise TargetTerminalError(
                f"staged file {uri} is not under stage_url {self.stage_url}; point the Snowflake "
                "stage and stage_url at the S3 stage's bucket and prefix"
            )
        return uri[len(self.stage_url) :]

    # --- connection and errors ----------------------------------------------------------------

    async def _session(
        self,
        work: Callable[[Any], T],
        action: str,
        *,
        transactional: bool,
        interruptible: bool = True,
    ) -> T:
        def run(interrupt: Interrupt) -> T:
            with client_settings("Snowflake target"):
                args = dict(self.connect_args)
                # A worker killed inside `replace` leaves its transaction detached, holding the
                # table's lock until Snowflake rolls it back (after 4 h idle). Wait a bounded
                # time.
                args["session_parameters"] = {
                    "LOCK_TIMEOUT": self.lock_timeout_seconds,
                    **args.get("session_parameters", {}),
                }
                connection = revalidated(self.connector.credentials).get_client(
                    database=self.connector.database,
                    warehouse=self.connector.warehouse,
                    schema=self.connector.schema_,
                    autocommit=not transactional,
                    **args,
                )
            interrupt.arm(lambda: _cancel_all(connection))
            try:
                cursor = connection.cursor()
                try:
                    result = work(cursor)
                    if transactional:
                        failpoints.hit("before_commit")
                        interrupt.check()
                        connection.commit()
                    return result
                except BaseException:
                    if transactional:
                        connection.rollback()  # a failed statement does not roll back by itself
                    raise
            finally:
                interrupt.arm(None)
                connection.close()

        try:
            if interruptible:
                return await in_thread(run)
            return await asyncio.to_thread(run, Interrupt())
        except sf_errors.Error as exc:
            raise target_error(exc, f"Snowflake table {self.table!r}", action) from None


def _session_name(name: str | None) -> str:
    """A connection's database or schema as Snowflake resolves it: unquoted names are upper
    case, a double-quoted one is kept as written."""
    if not name:
        return ""
    if name.startswith('"') and name.endswith('"') and len(name) > 1:
        return name[1:-1]
    return name.upper()


def _cancel_all(connection: Any) -> None:
    """Cancel the session's running statement from another thread (the lease was lost)."""
    connection.cursor().execute("SELECT SYSTEM$CANCEL_ALL_QUERIES(%s)", (connection.session_id,))


def _bounds(window: Window) -> tuple[datetime, datetime]:
    return window.start, window.end
