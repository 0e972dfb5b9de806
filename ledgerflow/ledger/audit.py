"""The audit's rule, pure: compare a window's two counts exactly, and say why in words.

A window passes when `|source - target| * 100 <= tolerance * source`, computed in integers with
the tolerance as the decimal its text shows (0.3 is 3/10, not the float 0.2999...). Nothing is
rounded before the comparison: rounding the percentage first let one missing row in 20,001 pass
at tolerance 0. Percentages are rounded only to be shown or stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from ledgerflow.errors import AuditMismatch
from ledgerflow.ledger.models import AuditResult, PipelineRecord

STORED_PLACES = Decimal("0.0001")
"""`percentage_difference` is stored with 4 decimals (its column is NUMERIC(25,4))."""


def tolerance_percent(value: float | Decimal | str) -> Decimal:
    """The tolerance as the exact decimal its text shows; a percentage from 0 to 100."""
    try:
        tolerance = Decimal(str(value))
    except InvalidOperation:
        tolerance = Decimal("NaN")
    if not tolerance.is_finite() or not 0 <= tolerance <= 100:
        raise ValueError(f"audit tolerance {value!r} is not allowed; allowed: 0 to 100 (percent)")
    return tolerance


def within_tolerance(source: int, target: int, tolerance: Decimal) -> bool:
    """The audit's decision, exact: `|source - target| * 100 <= tolerance * source`."""
    numerator, denominator = tolerance.as_integer_ratio()
    return abs(source - target) * 100 * denominator <= numerator * source


def percentage_difference(source: int, target: int) -> Decimal:
    """|source - target| as a percentage of source, to 4 decimals (for the ledger column); 100
    when the source is empty and the target is not."""
    if source == 0:
        return Decimal(0) if target == 0 else Decimal(100)
    return (Decimal(abs(source - target)) * 100 / Decimal(source)).quantize(STORED_PLACES)


def shown_percent(source: int, target: int, tolerance: Decimal | None = None) -> str:
    """The difference as a person reads it: 2 decimals, or 2 significant digits below 0.01%, so
    a difference that is not zero never shows as 0%; and as many more digits as it takes for the
    shown value to compare with `tolerance` the way the exact one does (0.781% > 0.78%)."""
    if source == 0:
        return "0%" if target == 0 else "source empty"
    exact = Decimal(abs(source - target)) * 100 / Decimal(source)
    if exact == 0:
        return "0%"
    places = (
        Decimal("0.01") if exact >= Decimal("0.01") else Decimal(1).scaleb(exact.adjusted() - 1)
    )
    shown = exact.quantize(places)
    while (
        tolerance is not None
        and (shown <= tolerance) != (exact <= tolerance)
        and places > Decimal("1e-12")
    ):
        places /= 10
        shown = exact.quantize(places)
    return f"{_plain(shown)}%"


def explain(
    source: int | None,
    target: int | None,
    result: str | None,
    tolerance: Decimal | None,
) -> str:
    """What the audit compared and why it passed or failed, e.g.
    `source 1,000, target 999: 1 missing (0.1%) > tolerance 0%`; empty before any count."""
    if source is None or target is None:
        return ""
    if result is None:  # counted by pre-validation, not audited (yet)
        return f"counted before loading: source {source:,}, target {target:,}"
    if result == AuditResult.MATCH:
        return f"source {source:,} = target {target:,} before loading: transfer skipped"
    if source == target:
        return f"source {source:,} = target {target:,}"
    gap = target - source
    what = f"{-gap:,} missing" if gap < 0 else f"{gap:,} extra"
    shown = shown_percent(source, target, tolerance)
    text = f"source {source:,}, target {target:,}: {what} ({shown})"
    if tolerance is None:  # audited before the tolerance was recorded
        return text
    # The sign comes from the exact rule, not from the recorded result.
    sign = "<=" if within_tolerance(source, target, tolerance) else ">"
    return f"{text} {sign} tolerance {_plain(tolerance)}%"


def explain_record(record: PipelineRecord) -> str:
    """`explain` for a ledger row."""
    return explain(
        record.source_count,
        record.target_count,
        record.audit_result,
        record.audit_tolerance_percent,
    )


@dataclass(frozen=True)
class AuditVerdict:
    """The audit of one window: its recounts, the tolerance, and the exact decision."""

    source: int
    target: int
    tolerance: Decimal

    @property
    def passed(self) -> bool:
        return within_tolerance(self.source, self.target, self.tolerance)

    @property
    def result(self) -> AuditResult:
        return AuditResult.PASS if self.passed else AuditResult.FAIL

    @property
    def percentage(self) -> Decimal:
        return percentage_difference(self.source, self.target)

    def explain(self) -> str:
        return explain(self.source, self.target, self.result, self.tolerance)

    def mismatch(self) -> AuditMismatch:
        """The error a failed audit raises; its text is the window's error_message."""
        return AuditMismatch(
            self.source, self.target, self.percentage, self.tolerance, self.explain()
        )


def judge(source: int, target: int, tolerance: float | Decimal | str) -> AuditVerdict:
    """The audit's verdict on two counts under a tolerance in percent (its text is exact)."""
    return AuditVerdict(source, target, tolerance_percent(tolerance))


def _plain(value: Decimal) -> str:
    """A decimal without exponent or trailing zeros: 0.10 -> 0.1, 100.00 -> 100."""
    text = f"{value:,f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
