"""Timestamps as Elasticsearch stores them, read as UTC epoch microseconds.

Epoch millis with a fraction are read from their digits, floored as the server does; a value in
a form this cannot read comes back as None, and the caller asks the server for it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import pyarrow as pa

from ledgerflow.blocks.elasticsearch.jsontext import dig

DATE_TYPES = ("date", "date_nanos")
DEFAULT_DATE_FORMAT = "strict_date_optional_time||epoch_millis"
# Date formats whose _source values ledgerflow reads itself (ISO 8601 and epoch milliseconds);
# any other format in a mapping makes every hit carry the server-formatted value instead.
READABLE_DATE_FORMATS = frozenset(
    {
        "strict_date_optional_time",
        "date_optional_time",
        "strict_date_optional_time_nanos",
        "strict_date_time",
        "date_time",
        "strict_date_time_no_millis",
        "date_time_no_millis",
        "epoch_millis",
    }
)
UTC_MICROS = pa.timestamp("us", tz="UTC")
_UTC_NS = pa.timestamp("ns", tz="UTC")
_EPOCH_MILLIS = re.compile(r"-?\d+(?:\.\d+)?")


def iso_millis(value: datetime) -> str:
    """A UTC instant as ISO 8601 with milliseconds and a Z, the form range queries are sent in."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def utc_micros(stamps: pa.Array) -> pa.Array:
    """ISO 8601 strings with a zone (or nulls) as UTC microseconds (nanoseconds truncated)."""
    return stamps.cast(_UTC_NS).cast(UTC_MICROS, safe=False)


def source_value(source: Mapping[str, Any], path: str) -> Any:
    """A field of _source by its mapping path: a literal dotted key, or nested objects."""
    return source[path] if path in source else dig(source, path)


def parse_stamps(values: list[Any]) -> list[int | None]:
    """Timestamps as ES stores them in _source, as UTC epoch microseconds; None where this
    cannot read a value (the caller asks the server for those)."""
    if values and all(isinstance(v, str) for v in values):
        try:
            micros: list[int | None] = (
                utc_micros(pa.array(values, pa.string())).cast(pa.int64()).to_pylist()
            )
            return micros
        except (pa.ArrowInvalid, ValueError):
            pass  # some value is naive, partial or odd: one by one
    return [_parse_stamp(v) for v in values]


def _parse_stamp(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):  # epoch_millis
        return value * 1000
    if isinstance(value, float):
        # Decoded by orjson only when its text had at most 15 significant digits, so the
        # shortest repr is that text's exact value (a 16th digit sends the page to Decimal).
        return _millis_to_micros(repr(value))
    if isinstance(value, Decimal):
        return _millis_to_micros(str(value))
    if not isinstance(value, str):
        return None  # an array, an object or a null: the server's docvalue says which
    text = value.strip().replace(",", ".")
    if _EPOCH_MILLIS.fullmatch(text) and not (len(text) == 4 and text.isdigit()):
        return _millis_to_micros(text)  # four digits are a year, as ES reads it
    date, _, clock = text.partition("T")
    candidates = [text]
    if not clock:  # yyyy, yyyy-MM or yyyy-MM-dd: the start of that period, UTC
        year, _, rest = date.partition("-")
        month, _, day = rest.partition("-")
        candidates = [f"{year}-{month or '01'}-{day or '01'}T00:00:00Z"]
    elif not (clock.endswith("Z") or "+" in clock or "-" in clock):
        candidates.append(text + "Z")  # no zone: Elasticsearch reads it as UTC
    for candidate in candidates:
        try:
            micros = utc_micros(pa.array([candidate], pa.string())).cast(pa.int64())[0]
        except (pa.ArrowInvalid, ValueError):
            continue
        return int(micros.as_py())
    return None


def _millis_to_micros(text: str) -> int:
    """Epoch milliseconds written as text (a fraction allowed) as epoch microseconds, floored
    from the exact decimal the way Elasticsearch reads it: never through a float, whose rounding
    moved `...399999.9995` onto the next millisecond and into the next window."""
    return int((Decimal(text) * 1000).to_integral_value(rounding=ROUND_FLOOR))
