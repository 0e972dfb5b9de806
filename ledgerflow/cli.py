"""The `ledgerflow` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ledgerflow.errors import LedgerflowError
from ledgerflow.windows import as_utc, windows_between

app = typer.Typer(
    name="ledgerflow",
    help="Windowed batch ELT on Prefect 2: every window loaded exactly once.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console()
T = TypeVar("T")


def fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except LedgerflowError as exc:
        raise fail(str(exc)) from None


def parse_instant(text: str, option: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise fail(
            f"{option}={text!r} is not an ISO 8601 instant, e.g. 2025-03-09T00:00:00Z"
        ) from None
    if value.tzinfo is None:
        raise fail(f"{option}={text!r} has no UTC offset; add Z or e.g. -08:00")
    return as_utc(value)


@app.callback()
def main() -> None:
    """Windowed batch ELT on Prefect 2: every window loaded exactly once."""


@app.command()
def plan(
    timezone: Annotated[str, typer.Option(help="IANA timezone, e.g. America/Los_Angeles")],
    granularity: Annotated[str, typer.Option(help="Window size: a divisor of 24h or whole days")],
    start: Annotated[str, typer.Option(help="ISO 8601 instant with offset")],
    end: Annotated[str, typer.Option(help="ISO 8601 instant with offset")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Print the windows that tile [start, end), to see what a DST day does before deploying."""
    lo, hi = parse_instant(start, "--start"), parse_instant(end, "--end")
    if hi <= lo:
        raise fail(f"--end={end!r} must be after --start={start!r}")
    try:
        windows = windows_between(lo, hi, timezone, granularity)
    except LedgerflowError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps([w.to_dict() for w in windows], indent=2))
        return
    table = Table(title=f"{len(windows)} windows of {granularity} in {timezone}")
    for column in ("target_day", "local start", "local end", "UTC start", "UTC end", "length"):
        table.add_column(column)
    for w in windows:
        lo_local, hi_local = w.local(timezone)
        odd = w.duration.total_seconds() != windows[0].duration.total_seconds()
        table.add_row(
            w.target_day.isoformat(),
            lo_local.strftime("%Y-%m-%d %H:%M %Z"),
            hi_local.strftime("%Y-%m-%d %H:%M %Z"),
            w.to_dict()["start"],
            w.to_dict()["end"],
            f"[yellow]{w.duration}[/]" if odd else str(w.duration),
        )
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    app()
