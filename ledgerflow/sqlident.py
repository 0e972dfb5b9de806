"""Validated, quoted SQL identifiers. Values are always bound parameters, never formatted in."""

from __future__ import annotations

import re

from ledgerflow.errors import ConfigError

_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,254}")


def quote_identifier(name: str, *, field: str = "identifier") -> str:
    """`name` (optionally dotted: db.schema.table) with each part checked and double-quoted."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{field}={name!r} is empty; give a table or column name")
    parts = name.split(".")
    if len(parts) > 3 or not all(_PART.fullmatch(p) for p in parts):
        raise ConfigError(
            f"{field}={name!r} is not a plain identifier; allowed: letters, digits, '_' and '$', "
            "starting with a letter or '_', optionally qualified as schema.table or db.schema.table"
        )
    return ".".join(f'"{p}"' for p in parts)
