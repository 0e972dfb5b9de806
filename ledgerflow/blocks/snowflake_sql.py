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
