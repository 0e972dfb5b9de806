"""Snowflake SQL for the target, as pure functions of validated, quoted identifiers.

Values (window bounds, load times) are always bound parameters (`%s`, the connector's pyformat
style). Only identifiers and staged file names, both validated, are written into the text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ledgerflow.errors import ConfigError
from ledgerflow.sqlident import quote_identifier

_FILE = re.compile(r"[A-Za-z0-9_./=\-]{1,1024}")

DEFAULT_COLUMNS = ("_ID", "_INDEX", "TS", "DOCUMENT")
"""What the Elasticsearch source stages: id, index, timestamp, the document as JSON text."""


def create_table_sql(table: str, ts: str, window_start: str | None, loaded_at: str | None) -> str:
    """The documented default table: id, index, timestamp, VARIANT document, window start, load
    time."""
    columns = [
        f"{quote_identifier('_ID')} VARCHAR",
        f"{quote_identifier('_INDEX')} VARCHAR",
        f"{quote_identifier(ts)} TIMESTAMP_TZ",
        f"{quote_identifier('DOCUMENT')} VARIANT",
    ]
    columns += [f"{quote_identifier(c)} TIMESTAMP_TZ" for c in (window_start, loaded_at) if c]
    return f"CREATE TABLE IF NOT EXISTS {quote_identifier(table)} ({', '.join(columns)})"


def count_sql(table: str, ts: str) -> str:
    t, c = quote_identifier(table), quote_identifier(ts)
    return f"SELECT COUNT(*) FROM {t} WHERE {c} >= %s AND {c} < %s"


def delete_sql(table: str, ts: str) -> str:
    t, c = quote_identifier(table), quote_identifier(ts)
    return f"DELETE FROM {t} WHERE {c} >= %s AND {c} < %s"


def copy_sql(
    table: str,
    stage: str,
    files: Sequence[str],
    columns: Sequence[str] | None,
    json_columns: Sequence[str] = (),
) -> str:
    """COPY the named staged files into `table`, FORCE-d.

    FORCE: the window's rows were deleted in this same transaction, so a file Snowflake's load
    metadata remembers (a resumed window re-loading its staged files) must load again rather than
    be skipped as LOAD_SKIPPED.

    With `columns`, a transformation COPY selects each column from the Parquet record by its
    lower-case name and parses `json_columns` with PARSE_JSON (so a JSON text column lands as a
    real VARIANT object). Without, Parquet columns are matched to the table's by name.
    """
    if not files:
        raise ValueError("copy_sql needs at least one file")
    for f in files:
        if not _FILE.fullmatch(f) or ".." in f.split("/"):
            raise ConfigError(f"staged file name {f!r} is not a plain relative path")
    names = ", ".join(f"'{f}'" for f in files)
    at = "@" + ".".join(quote_identifier(p) for p in stage.split("."))
    tail = f"FILES = ({names}) FILE_FORMAT = (TYPE = PARQUET) FORCE = TRUE"
    target = quote_identifier(table)
    if columns is None:
        return f"COPY INTO {target} FROM {at} {tail} MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE"
    wanted = {c.upper() for c in json_columns}
    selects = []
    for column in columns:
        quote_identifier(column, field="load_columns")
        field = f"$1:{column.lower()}"
        selects.append(f"PARSE_JSON({field})" if column.upper() in wanted else field)
    listed = ", ".join(quote_identifier(c) for c in columns)
    return f"COPY INTO {target} ({listed}) FROM (SELECT {', '.join(selects)} FROM {at}) {tail}"


def stamp_sql(table: str, ts: str, window_start: str | None, loaded_at: str | None) -> str | None:
    """Fill the window-start and load-time columns of the rows just loaded (same transaction)."""
    sets = [f"{quote_identifier(c)} = %s" for c in (window_start, loaded_at) if c]
    if not sets:
        return None
    t, c = quote_identifier(table), quote_identifier(ts)
    return f"UPDATE {t} SET {', '.join(sets)} WHERE {c} >= %s AND {c} < %s"


FENCES = "LEDGERFLOW_FENCES"


def fence_table(table: str) -> str:
    """The fence table, in the data table's schema (when `table` names one)."""
    schema, _, _name = table.rpartition(".")
    return f"{schema}.{FENCES}" if schema else FENCES


def create_fence_table_sql(fences: str) -> str:
    """Per (pipeline, window start): the greatest claim number seen, the window's end, and the
    table it was loaded into (a table belongs to the pipeline whose fence rows name it)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(fences)} (PIPELINE_ID VARCHAR NOT NULL, "
        "WINDOW_START TIMESTAMP_TZ NOT NULL, TOKEN NUMBER(38, 0) NOT NULL, "
        "WINDOW_END TIMESTAMP_TZ, TARGET_TABLE VARCHAR)"
    )


def add_fence_columns_sql(fences: str) -> list[str]:
    """The columns a fence table made by an earlier ledgerflow lacks (its rows hold NULL)."""
    f = quote_identifier(fences)
    return [
        f"ALTER TABLE {f} ADD COLUMN IF NOT EXISTS {column} {kind}"
        for column, kind in (("WINDOW_END", "TIMESTAMP_TZ"), ("TARGET_TABLE", "VARCHAR"))
    ]


def advance_fence_sql(fences: str) -> str:
    """Raise the window's recorded token to the bound one, with its end and table, or insert it
    (bound: pipeline, window start, window end, table, token); a greater recorded token is left
    alone (the caller reads it back). A MERGE, not an INSERT: DML that updates takes the table's
    lock, so fencing transactions serialize."""
    f = quote_identifier(fences)
    return (
        f"MERGE INTO {f} F USING (SELECT %s AS PIPELINE_ID, %s::TIMESTAMP_TZ AS WINDOW_START, "
        "%s::TIMESTAMP_TZ AS WINDOW_END, %s AS TARGET_TABLE, %s AS TOKEN) S "
        "ON F.PIPELINE_ID = S.PIPELINE_ID AND F.WINDOW_START = S.WINDOW_START "
        "WHEN MATCHED AND F.TOKEN <= S.TOKEN THEN UPDATE SET TOKEN = S.TOKEN, "
        "WINDOW_END = S.WINDOW_END, TARGET_TABLE = S.TARGET_TABLE "
        "WHEN NOT MATCHED THEN INSERT (PIPELINE_ID, WINDOW_START, WINDOW_END, TARGET_TABLE, TOKEN) "
        "VALUES (S.PIPELINE_ID, S.WINDOW_START, S.WINDOW_END, S.TARGET_TABLE, S.TOKEN)"
    )


def read_fence_sql(fences: str) -> str:
    """After the MERGE (which holds the table's lock): the greatest token of any window of the
    pipeline overlapping [start, end), the window's own included, and another pipeline whose
    fence rows name the table, if any (bound: pipeline, end, start, table, pipeline).

    A row from before WINDOW_END existed is taken to reach forever: every claim drawn since holds
    a greater number (the ledger's counter starts above every earlier one)."""
    f = quote_identifier(fences)
    return (
        f"SELECT (SELECT MAX(TOKEN) FROM {f} WHERE PIPELINE_ID = %s AND WINDOW_START < %s "
        "AND (WINDOW_END IS NULL OR WINDOW_END > %s)), "
        f"(SELECT MIN(PIPELINE_ID) FROM {f} WHERE TARGET_TABLE = %s AND PIPELINE_ID <> %s)"
    )


def outside_example_sql(table: str, ts: str, loaded_at: str) -> str:
    """One row this transaction loaded (its load time not stamped yet) outside the window."""
    t, c, stamp = quote_identifier(table), quote_identifier(ts), quote_identifier(loaded_at)
    return (
        f"SELECT {c} FROM {t} WHERE {stamp} IS NULL "
        f"AND ({c} IS NULL OR NOT ({c} >= %s AND {c} < %s)) LIMIT 1"
    )
