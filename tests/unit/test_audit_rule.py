"""The audit's rule, pure: exact decisions at the boundaries, and the sentence it shows."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ledgerflow.ledger import AuditResult
from ledgerflow.ledger.audit import explain, judge, percentage_difference, tolerance_percent
from ledgerflow.tasks.common import artifact_key

PROMISED = [
    # (source, target, tolerance, passes): the cases a rounded percentage got wrong, and the
    # boundaries that must stay exact.
    (20_001, 20_000, 0, False),  # 0.00499...% rounded to 0.00 used to pass
    (1_000_000, 999_951, 0, False),  # -49 in a million: 0.0049% -> 0.00
    (1_000_000, 1_000_049, 0, False),  # +49 in a million
    (1_000_000, 1_000_000, 0, True),
    (1_000, 997, 0.3, True),  # exactly 0.3%; the float 0.3 is 0.29999..., its text is 3/10
    (1_000, 996, 0.3, False),
    (128, 127, 0.78, False),  # 0.78125% rounded to 0.78 used to pass at tolerance 0.78
    (0, 0, 0, True),
    (0, 5, 100, False),  # rows in the target where the source has none never pass
    (1, 100_001, 100, False),
    (2**63 - 1, 0, 100, True),  # BIGINT counts: no overflow, no float
]


@pytest.mark.parametrize(("source", "target", "tolerance", "passes"), PROMISED)
def test_the_decision_is_exact(source: int, target: int, tolerance: float, passes: bool) -> None:
    verdict = judge(source, target, tolerance)
    assert verdict.passed is passes
    assert verdict.result == (AuditResult.PASS if passes else AuditResult.FAIL)


@given(
    source=st.integers(min_value=0, max_value=2**63 - 1),
    target=st.integers(min_value=0, max_value=2**63 - 1),
    hundredths=st.integers(min_value=0, max_value=10_000),
)
def test_the_decision_agrees_with_fractions(source: int, target: int, hundredths: int) -> None:
    tolerance = Decimal(hundredths) / 100
    exact = Fraction(abs(source - target) * 100) <= Fraction(hundredths, 100) * source
    assert judge(source, target, str(tolerance)).passed is exact


def test_the_stored_percentage_fits_numeric_25_4_for_every_pair_of_bigint_counts() -> None:
    widest = percentage_difference(1, 2**63 - 1)
    assert widest == Decimal("922337203685477580600.0000")
    assert len(widest.as_tuple().digits) <= 25 and widest.as_tuple().exponent == -4
    assert percentage_difference(1, 100_001) == Decimal("10000000.0000")  # 10^5 x the source
    assert percentage_difference(20_001, 20_000) == Decimal("0.0050")


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ((1_000, 1_000, "PASS", Decimal(0)), "source 1,000 = target 1,000"),
        (
            (1_000, 999, "FAIL", Decimal(0)),
            "source 1,000, target 999: 1 missing (0.1%) > tolerance 0%",
        ),
        (
            (1_000, 1_002, "PASS", Decimal("0.5")),
            "source 1,000, target 1,002: 2 extra (0.2%) <= tolerance 0.5%",
        ),
        (
            (20_001, 20_000, "FAIL", Decimal(0)),
            "source 20,001, target 20,000: 1 missing (0.005%) > tolerance 0%",
        ),
        # Shown with as many digits as it takes to agree with the comparison.
        ((128, 127, "FAIL", Decimal("0.78")), "source 128, target 127: 1 missing (0.781%) > "),
        ((0, 5, "FAIL", Decimal(0)), "source 0, target 5: 5 extra (source empty) > tolerance 0%"),
        (
            (1_000, 1_000, "MATCH", None),
            "source 1,000 = target 1,000 before loading: transfer skipped",
        ),
        ((1_000, 999, "PASS", None), "source 1,000, target 999: 1 missing (0.1%)"),
        ((5, 3, None, None), "counted before loading: source 5, target 3"),
        ((None, None, None, None), ""),
    ],
)
def test_the_explanation_reads_at_a_glance(args: tuple, text: str) -> None:  # type: ignore[type-arg]
    assert explain(*args).startswith(text)


def test_a_tolerance_that_is_not_a_percentage_is_refused() -> None:
    for bad in ("-1", "100.5", "nan", "inf", "ten"):
        with pytest.raises(ValueError, match=f"audit tolerance '{bad}' is not allowed; allowed"):
            tolerance_percent(bad)
    assert tolerance_percent(0.1) == Decimal("0.1")


def test_one_artifact_key_takes_any_pipeline_id() -> None:
    assert artifact_key("web.events_v2") == "ledgerflow-web-events-v2"
    assert artifact_key("Web.Events_v2", "audit") == "ledgerflow-audit-web-events-v2"
    assert artifact_key("a..b-") == "ledgerflow-a-b"
