"""JSON exactly as the server wrote it: the response decoder and the document text written out.

Integers beyond 64 bits and decimals longer than a double keep every digit; an escaped lone
surrogate stays the JSON escape `\\ud800` (UTF-8 cannot hold it)."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
from elasticsearch.serializer import OrjsonSerializer

# A response is decoded by orjson unless it may hold a number orjson would change: a float with
# 16 or more significant digits (a double keeps 15) or an integer beyond 64 bits. Both need a run
# of at least 17 digits and dots, which `bytes.translate` + `in` finds in a quarter of the time
# orjson takes to decode the page (a regex takes three times as long as orjson).
_DIGITS_AND_DOTS = bytes(0x30 if chr(b) in "0123456789." else 0x20 for b in range(256))
_LONG_NUMBER = b"0" * 17
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class ExactJsonSerializer(OrjsonSerializer):
    """Decodes responses as the server wrote them: orjson for the common page, the stdlib's
    decoder for the rare one orjson would change or refuse.

    The stdlib path keeps every integer exact (Python ints), reads floats as `Decimal` (the
    digits as written) and accepts an escaped lone surrogate (`"\\ud800"`), which orjson refuses.
    """

    def json_loads(self, data: bytes) -> Any:
        if _LONG_NUMBER not in data.translate(_DIGITS_AND_DOTS):
            with contextlib.suppress(orjson.JSONDecodeError):  # e.g. a lone surrogate escape
                return orjson.loads(data)
        return json.loads(data, parse_float=Decimal)


def json_text(value: Any) -> str:
    """`value` as JSON text, numbers and strings exactly as the server sent them."""
    try:
        return orjson.dumps(value, default=_exact_number).decode()
    except TypeError:  # an integer beyond 64 bits or a lone surrogate: orjson cannot write it
        return _exact_json(value)


def field_text(value: Any) -> str | None:
    """A document field as a text column value: strings as they are, anything else as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json_text(value)


def text_column(values: list[str | None]) -> pa.Array:
    """Text values as an Arrow column; a lone surrogate (not encodable as UTF-8) is escaped."""
    try:
        return pa.array(values, pa.string())
    except UnicodeEncodeError:
        return pa.array([v and _escape_surrogates(v) for v in values], pa.string())


def dig(document: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path through nested objects, or None."""
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _exact_number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))  # the digits as the server wrote them
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _exact_json(value: Any) -> str:
    """The slow writer for what orjson refuses. A lone surrogate stays the JSON escape the
    server sent (`"\\ud800"`): the text is valid UTF-8 and reads back as the same code unit."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json_string(k)}:{_exact_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_exact_json(v) for v in value) + "]"
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    return orjson.dumps(value).decode()  # true, false, null, a float


def _json_string(text: str) -> str:
    return _escape_surrogates(json.dumps(text, ensure_ascii=False))


def _escape_surrogates(text: str) -> str:
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
