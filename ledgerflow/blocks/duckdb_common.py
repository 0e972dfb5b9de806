"""What the DuckDB source and target share: one database per file per process, and one error rule.

A DuckDB file can be open read-write in one process at a time. Several worker processes (a work
pool) share the embedded target, so the file is held only while an operation runs, and an operation
that finds the file locked by another process waits for it (up to `lock_timeout`) instead of
failing.

Within one process, threads must not each call `duckdb.connect(path)`: DuckDB 1.5 races on its
own instance cache and sometimes answers "Unique file handle conflict ... already attached". So a
process opens each file once, hands every operation its own cursor on that database (a cursor is a
separate connection with its own transaction), and closes the database when the last operation
using it ends, which releases the file to other processes.

Errors are classified here by cause, not by exception class, for the source and the target alike:
DuckDB raises the same `BinderException` for a file-handle race (retry) as for a missing column
(do not).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import duckdb
import pyarrow as pa

from ledgerflow.errors import LedgerflowError, TerminalError, TransientError

T = TypeVar("T")


@dataclass(frozen=True)
class Resources:
    """What a block lets DuckDB use: `memory_limit` (e.g. "256MB"), `threads`, `temp_directory`
    (where an operation larger than the limit spills), each None for DuckDB's own default (80%
    of the machine's memory, one thread per core, `<path>.tmp` beside the database file)."""

    memory_limit: str | None = None
    threads: int | None = None
    temp_directory: str | None = None

    def config(self) -> dict[str, str | bool | int | float | list[str]]:
        """For duckdb.connect: every set value."""
        found: dict[str, str | bool | int | float | list[str] | None] = {
            "memory_limit": self.memory_limit,
            "threads": self.threads,
            "temp_directory": self.temp_directory,
        }
        return {k: v for k, v in found.items() if v is not None}


_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)
_UNIT = {"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20}
_UNIT |= {"gib": 2**30, "tib": 2**40}
MIN_MEMORY_LIMIT = 32 * 2**20  # below it a load of one row group fails
AUTO = "auto"


def memory_bytes(value: str) -> int:
    """The bytes of a memory size that `check_memory_limit` accepted."""
    found = _MEMORY.match(value)
    if found is None:
        raise ValueError(f"memory_limit={value!r} is not a memory size")
    return int(float(found[1]) * _UNIT[found[2].lower()])


def check_memory_limit(value: str | None) -> str | None:
    """A DuckDB memory size such as "256MB" or "1GiB", at least 32 MiB; "auto" (the target
    sizes it for each load); None is DuckDB's default (80% of the machine's memory)."""
    if value is None or value == AUTO:
        return value
    found = _MEMORY.match(value)
    if found is None:
        raise ValueError(
            f"memory_limit={value!r} is not a memory size; allowed: 'auto', or a number and a "
            "unit, KB MB GB TB (powers of 1000) or KiB MiB GiB TiB (powers of 1024), e.g. "
            "'256MB', or unset for DuckDB's default (80% of the machine's memory)"
        )
    size = memory_bytes(value)
    if size < MIN_MEMORY_LIMIT:
        raise ValueError(
            f"memory_limit={value!r} is below 32MiB, too little for DuckDB to load a Parquet "
            "row group; allowed: 32MiB or more"
        )
    return f"{found[1]}{found[2]}"


def check_temp_directory(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError(
            f"temp_directory={value!r} names no folder; give a folder, or leave it unset for "
            "'<database file>.tmp' beside the database"
        )
    return value


class FileBusy(TimeoutError):
    """The DuckDB file stayed busy (another process's lock, or this process's read-only use of it
    while a write waits) for longer than lock_timeout."""


@dataclass
class _Database:
    """One open database for a file in this process, and how many operations use it now."""

    con: duckdb.DuckDBPyConnection | None
    read_only: bool
    users: int = 0
    busy: bool = True  # being opened or closed: others wait
    writers_waiting: int = 0
    reserved: int = 0  # bytes the loads in progress reserved on top of the memory limit


# Keyed by (pid, absolute path): a child process after fork must never use its parent's database.
_databases: dict[tuple[int, str], _Database] = {}
_changed = threading.Condition()


def _forget_after_fork() -> None:
    # The condition may have been held by another thread at fork time; the child starts afresh.
    global _changed
    _databases.clear()
    _changed = threading.Condition()


os.register_at_fork(after_in_child=_forget_after_fork)


class DuckDBHandle:
    """Operations on `path`; the session time zone is UTC, so TIMESTAMP (naive) columns are read
    as UTC and compare correctly with the aware window bounds.

    Read-only and read-write handles on one file in one process share its database: a read-only
    operation uses the open read-write database (it only reads), and a read-write operation waits
    until the read-only operations in progress end, then opens the file read-write. DuckDB refuses
    to open one file with both configurations at once.
    """

    def __init__(
        self,
        path: str,
        *,
        read_only: bool,
        lock_timeout: float = 120.0,
        resources: Resources | None = None,
    ) -> None:
        self.path = path
        self.read_only = read_only
        self.lock_timeout = lock_timeout
        self.resources = resources or Resources()

    def open(self) -> duckdb.DuckDBPyConnection:
        """A cursor of its own on this process's database for the file; give it back to close()."""
        if self.path == ":memory:":  # each in-memory database is private: nothing to share
            return _settled(duckdb.connect(self.path, config=self.resources.config()))
        if not self.read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        key = (os.getpid(), os.path.abspath(self.path))
        deadline = time.monotonic() + self.lock_timeout
        with _changed:
            while True:
                db = _databases.get(key)
                if db is None:
                    db = _databases[key] = _Database(con=None, read_only=self.read_only)
                    break  # this thread opens it, below, without holding the condition
                if not db.busy and self._can_share(db):
                    assert db.con is not None
                    cur = _cursor(db.con, self.resources, db.reserved)
                    db.users += 1  # only once the cursor exists, so a failure leaks no count
                    return cur
                self._wait(db, deadline)
        try:
            con = _connect(self.path, self.read_only, deadline, self.resources)
        except BaseException:
            with _changed:
                del _databases[key]
                _changed.notify_all()
            raise
        with _changed:
            db.con, db.busy = con, False
            _changed.notify_all()
            cur = _cursor(con, self.resources, db.reserved)
            db.users += 1
            return cur

    def close(self, cur: duckdb.DuckDBPyConnection) -> None:
        """End an operation: close its cursor, and the database when no operation uses it."""
        if self.path == ":memory:":
            cur.close()
            return
        key = (os.getpid(), os.path.abspath(self.path))
        with _changed:
            cur.close()  # under the lock, like cursor(): both change the database's cursor list
            db = _databases[key]
            db.users -= 1
            if db.users:
                return
            db.busy = True
        try:
            assert db.con is not None
            db.con.close()  # releases the file's lock to other processes
        finally:
            with _changed:
                del _databases[key]
                _changed.notify_all()

    async def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run `fn` on a cursor of its own in a worker thread."""

        def call() -> T:
            cur = self.open()
            try:
                return fn(cur)
            finally:
                self.close(cur)

        return await asyncio.to_thread(call)

    @contextlib.contextmanager
    def reserving(self, cur: duckdb.DuckDBPyConnection, nbytes: int) -> Iterator[None]:
        """Raise the database's memory limit by `nbytes` while the block runs, for `cur`'s
        operation. Reservations of concurrent operations on one database add up, and an
        operation that opens a cursor meanwhile keeps them (the limit is the database's)."""
        if not nbytes:
            yield
            return
        db = (
            _Database(con=None, read_only=False, busy=False)  # private: only this operation's
            if self.path == ":memory:"
            else _databases[(os.getpid(), os.path.abspath(self.path))]
        )
        with _changed:
            db.reserved += nbytes
            _set_memory_limit(cur, self.resources, db.reserved)
        try:
            yield
        finally:
            with _changed, contextlib.suppress(duckdb.Error):  # the load's outcome stands
                db.reserved -= nbytes
                _set_memory_limit(cur, self.resources, db.reserved)

    def reserved(self) -> int:
        """The bytes the operations in progress on this file's database reserved."""
        with _changed:
            db = _databases.get((os.getpid(), os.path.abspath(self.path)))
            return db.reserved if db is not None else 0

    def _can_share(self, db: _Database) -> bool:
        if not db.read_only:
            return True
        # A waiting writer goes first, so a stream of short reads cannot starve it.
        return self.read_only and not db.writers_waiting

    def _wait(self, db: _Database, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FileBusy(
                f"DuckDB file {self.path!r} stayed busy in this process for longer than "
                f"lock_timeout={self.lock_timeout}s (a write waits for the read-only "
                "operations in progress to end)"
            )
        writer = not self.read_only and db.read_only and not db.busy
        db.writers_waiting += writer
        try:
            _changed.wait(left)
        finally:
            db.writers_waiting -= writer


def _connect(
    path: str, read_only: bool, deadline: float, resources: Resources
) -> duckdb.DuckDBPyConnection:
    """Open the file, waiting while another process holds its lock."""
    delay = 0.05
    while True:
        try:
            return duckdb.connect(path, read_only=read_only, config=resources.config())
        except duckdb.Error as exc:
            # A lock held by another process, or DuckDB's own cache racing with a connect that
            # is not ours (another library in this process): both pass.
            if transient_reason(exc) is None or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _cursor(
    con: duckdb.DuckDBPyConnection, resources: Resources, reserved: int
) -> duckdb.DuckDBPyConnection:
    """A cursor; the database's memory limit and threads become this operation's block's (they
    are the database's, for every cursor: the blocks sharing one file should agree), the limit
    raised by what the loads in progress reserved. The temp directory is set once, when the file
    is opened: DuckDB cannot move it once used."""
    cur = _settled(con.cursor())
    _set_memory_limit(cur, resources, reserved)
    if resources.threads is not None:
        cur.execute(f"SET threads = {int(resources.threads)}")
    return cur


def _set_memory_limit(cur: duckdb.DuckDBPyConnection, resources: Resources, reserved: int) -> None:
    if resources.memory_limit is None:
        # DuckDB's default (80% of the machine's memory), not what another block sharing the
        # file set. RESET alone only changes what current_setting reports (DuckDB 1.5 keeps the
        # buffer pool's limit), so set the default it reports.
        cur.execute("RESET memory_limit")
        row = cur.execute("SELECT current_setting('memory_limit')").fetchone()
        if row:
            cur.execute(f"SET memory_limit = '{row[0]}'")
        return
    if reserved:
        limit = f"{(memory_bytes(resources.memory_limit) + reserved) // 2**20}MiB"
    else:
        limit = resources.memory_limit  # checked: digits, unit
    cur.execute(f"SET memory_limit = '{limit}'")


def _settled(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor with the settings every operation runs under: times in UTC, and no cache of the
    files DuckDB reads. DuckDB 1.3 and later keep the bytes of the Parquet files a query read in
    the buffer pool, for the next read; an operation reads each staged file once, so the cache
    only took room (a 24 MB stage of 600,000 rows: 40 MB more at the load's peak). Set on the
    cursor, not at connect: a connect config that differs from another connection's to the same
    file (the user's own, in this process) is refused."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_external_file_cache = false")
    return con


# (words in DuckDB's message, lower case; why retrying helps). Checked before the class: DuckDB's
# BinderException covers both a file-handle race and a missing column.
_TRANSIENT_CAUSES = (
    ("unique file handle conflict", "another connection was attaching the same file"),
    ("already attached", "another connection was attaching the same file"),
    ("write-write conflict", "a concurrent transaction changed the same table"),
    ("conflict on tuple", "a concurrent transaction changed the same rows"),
    ("could not set lock", "another process holds the file's lock"),
    ("different configuration than existing", "the file is open with another configuration"),
)
# Classes whose every other cause is the statement or the data, not the moment: no retry helps.
_TERMINAL_CLASSES = (
    duckdb.CatalogException,  # a table or schema is missing
    duckdb.BinderException,  # a column is missing or a name does not bind
    duckdb.ConversionException,  # a value does not fit the column's type
    duckdb.ParserException,
    duckdb.ConstraintException,
)


def transient_reason(exc: BaseException) -> str | None:
    """Why retrying `exc` may succeed, or None when it will fail the same way again.

    Anything not known to be a schema or data problem is transient (IO, transactions, a busy
    file), like `errors.is_retryable` treats an unknown error: retries are bounded.
    """
    if isinstance(exc, FileBusy):
        return "the file stayed busy"
    message = str(exc).lower()
    for words, reason in _TRANSIENT_CAUSES:
        if words in message:
            return reason
    if isinstance(exc, _TERMINAL_CLASSES):
        return None
    return "DuckDB reported a failure that may pass"


# Held around CREATE TABLE: two creators of one table in one database conflict ("Catalog
# write-write conflict"), and a file is written by one process at a time, so this is enough.
creating_tables = threading.Lock()


# What the blocks translate: DuckDB's errors and a file that stayed busy.
DUCKDB_ERRORS = (duckdb.Error, FileBusy)


def translate(
    exc: BaseException,
    *,
    where: str,
    refused: str,
    transient: type[TransientError],
    terminal: type[TerminalError],
) -> LedgerflowError:
    """The block's error for `exc`: `transient` naming why a retry may pass, else `terminal`."""
    reason = transient_reason(exc)
    if reason is not None:
        return transient(f"{where}: {reason}; will retry: {exc}")
    return terminal(f"{where} {refused}: {exc}")


@dataclass(frozen=True)
class LoadShape:
    """What a load's memory follows: the staged files' leaf columns (a struct's fields each
    count) and their largest row group, uncompressed (DuckDB's reader decodes one at a time)."""

    columns: int
    largest_row_group: int


def load_shape(cur: duckdb.DuckDBPyConnection, uris: list[str]) -> LoadShape:
    """The shape of the Parquet files at `uris`, from their footers."""
    if not uris:
        return LoadShape(0, 0)
    row = cur.execute(
        "SELECT max(row_group_num_columns), max(row_group_bytes) FROM parquet_metadata(?)", [uris]
    ).fetchone()
    return LoadShape(int(row[0] or 0), int(row[1] or 0)) if row else LoadShape(0, 0)


def out_of_memory(exc: BaseException) -> bool:
    """Whether DuckDB ran out of its memory limit: while running a statement, or at a COMMIT
    that could not pin the blocks it writes ("Failed to commit: failed to pin block")."""
    if isinstance(exc, duckdb.OutOfMemoryException):
        return True
    return isinstance(exc, duckdb.TransactionException) and "failed to pin block" in str(exc)


def table_leaf_columns(cur: duckdb.DuckDBPyConnection, quoted_table: str) -> int:
    """How many leaf columns (a struct's fields each count, as in `load_shape`) the table has:
    a load fills every one of them, NULL where the staged files lack it."""
    schema = cur.execute(f"SELECT * FROM {quoted_table} LIMIT 0").to_arrow_table().schema
    return sum(_leaves(field.type) for field in schema)


def _leaves(kind: pa.DataType) -> int:
    if pa.types.is_struct(kind):
        return sum(_leaves(kind.field(i).type) for i in range(kind.num_fields)) or 1
    if pa.types.is_map(kind):
        return _leaves(kind.key_type) + _leaves(kind.item_type)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _leaves(kind.value_type)
    return 1


def table_exists(cur: duckdb.DuckDBPyConnection, quoted_table: str) -> bool:
    try:
        cur.execute(f"SELECT 1 FROM {quoted_table} LIMIT 0")
    except duckdb.CatalogException:
        return False
    return True
