"""Reading Elasticsearch timestamps from _source: every form a default date mapping accepts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from ledgerflow.blocks.elasticsearch import ExactJsonSerializer
from ledgerflow.blocks.elasticsearch.stamps import parse_stamps, source_value


def micros(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp() * 1_000_000)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-03-09T10:00:00Z", micros(2025, 3, 9, 10)),
        ("2025-03-09T11:00:00+01:00", micros(2025, 3, 9, 10)),
        ("2025-03-09T10:00:00.5Z", micros(2025, 3, 9, 10) + 500_000),
        ("2025-03-09T10:00:00,5Z", micros(2025, 3, 9, 10) + 500_000),
        ("2025-03-09T10:00:00.123456789Z", micros(2025, 3, 9, 10) + 123_456),
        ("2025-03-09T10:00:00", micros(2025, 3, 9, 10)),
        ("2025-03-09T10:00", micros(2025, 3, 9, 10)),
        ("2025-03-09", micros(2025, 3, 9)),
        ("2025-03", micros(2025, 3, 1)),
        ("2025", micros(2025, 1, 1)),
        (1741514400000, micros(2025, 3, 9, 10)),
        (1741514400000.5, micros(2025, 3, 9, 10) + 500),
        ("1741514400000", micros(2025, 3, 9, 10)),
        # Fractions are floored from the exact decimal, never rounded through a float.
        (Decimal("1741514399999.9995"), micros(2025, 3, 9, 10) - 1),
        ("1741514399999.9995", micros(2025, 3, 9, 10) - 1),
        ("1741514399999.999999", micros(2025, 3, 9, 10) - 1),
        (1741514399999.25, micros(2025, 3, 9, 10) - 750),
        ("-0.5", -500),
        (["2025-03-09T10:00:00Z"], None),  # an array: the server decides
        ({"gte": "2025"}, None),
        (None, None),
        (True, None),
        ("yesterday", None),
    ],
)
def test_each_form(value: Any, expected: int | None) -> None:
    assert parse_stamps([value]) == [expected]
    # The same value among plain ISO strings takes the one-by-one path and agrees.
    assert parse_stamps(["2025-01-01T00:00:00Z", value])[1] == expected


def test_a_field_path_is_a_dotted_key_or_nested_objects() -> None:
    assert source_value({"event.created": 1}, "event.created") == 1
    assert source_value({"event": {"created": 2}}, "event.created") == 2
    assert source_value({"event": 3}, "event.created") is None


def test_the_decoder_keeps_what_orjson_would_change_and_only_then_pays_for_it() -> None:
    decode = ExactJsonSerializer().loads
    common = decode(b'{"ts": 1741514399999.5, "ip": "10.100.100.100", "id": 1234567890123456}')
    assert type(common["ts"]) is float  # the fast decoder: no number here loses anything
    exact = decode(b'{"ts": 1741514399999.9995, "big": 18446744073709551617}')
    assert exact == {"ts": Decimal("1741514399999.9995"), "big": 18446744073709551617}
    assert decode(b'{"s": "\\ud800"}') == {"s": "\ud800"}
