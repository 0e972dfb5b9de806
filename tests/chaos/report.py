"""What every chaos script prints: one table, then `N passed, M failed`; and point checking."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table


def mark(ok: bool) -> str:
    return "[green]OK[/]" if ok else "[bold red]FAIL[/]"


def report(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], oks: Sequence[bool]
) -> int:
    """Print the table and the tally; the exit code is 0 only when every row passed."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)
    passed = sum(oks)
    print(f"{passed} passed, {len(oks) - passed} failed")
    return 0 if passed == len(oks) else 1


def chosen_points(asked: Sequence[str], allowed: Sequence[str]) -> list[str]:
    """The points asked for (all when none), or exit 2 naming the unknown ones."""
    unknown = [p for p in asked if p not in allowed]
    if unknown:
        print(f"unknown points {unknown}; allowed: {list(allowed)}")
        raise SystemExit(2)
    return list(asked) or list(allowed)
