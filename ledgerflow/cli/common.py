"""What every `ledgerflow` command shares: the typer app, the console, errors as one line, the
-c/--json/--status options, --start/--end parsing, and opening a pipeline's ledger."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from datetime import date, datetime, time
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from ledgerflow.errors import LedgerflowError
from ledgerflow.windows import as_utc

if TYPE_CHECKING:
    from ledgerflow.ledger import Ledger

app = typer.Typer(
    name="ledgerflow",
    help="Windowed batch ELT on Prefect 2: every window loaded exactly once.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
_probe = Console()
# Tables are wide; when piped (no terminal to measure), do not squeeze them into 80 columns.
console = _probe if _probe.is_terminal else Console(width=120)
T = TypeVar("T")
_When = TypeVar("_When", date, datetime)


def fail(message: str) -> typer.Exit:
    err = Console(stderr=True)
    # The message is text, never markup ("[ledger] type='x' is unknown" keeps its "[ledger]"),
    # and is printed whole: no wrapping or cropping at the terminal's width.
    err.print("error:", style="bold red", end=" ")
    err.print(message, markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    from sqlalchemy.exc import DBAPIError

    try:
        return asyncio.run(coro)
    except LedgerflowError as exc:
        raise fail(str(exc)) from None
    except DBAPIError as exc:
        from ledgerflow.redact import scrub_urls  # a driver's text may quote a DSN

        raise fail(
            f"the ledger database refused the request: {scrub_urls(str(exc.orig))}"
        ) from None


# Instants the CLI takes: far from datetime's limits, so no window grid padded by days or weeks
# around them (nor a UTC conversion) leaves the calendar.
FIRST_YEAR, LAST_YEAR = 1000, 8999
# Integer options become SQL parameters: within a 32-bit integer, what every ledger's ids hold.
LARGEST = 2**31 - 1


def parse_when(text: str, option: str) -> datetime | date:
    """An ISO 8601 instant with its offset, or a plain date (read later in the pipeline's zone)."""
    value: datetime | date
    if len(text) == 10:
        try:
            value = date.fromisoformat(text)
        except ValueError:
            pass
        else:
            return _in_calendar(value, text, option)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise fail(
            f"{option}={text!r} is not an ISO 8601 instant or a date, e.g. "
            "2025-03-09T00:00:00Z or 2025-03-09"
        ) from None
    if value.tzinfo is None:
        raise fail(f"{option}={text!r} has no UTC offset; add Z or e.g. -08:00, or give a date")
    return as_utc(_in_calendar(value, text, option))


def _in_calendar(value: _When, text: str, option: str) -> _When:
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise fail(f"{option}={text!r} is out of range; allowed: years {FIRST_YEAR} to {LAST_YEAR}")
    return value


def in_range(option: str, value: int, lowest: int = 1, highest: int = LARGEST) -> int:
    """An integer option checked before it reaches the ledger's SQL."""
    if value < lowest:
        raise fail(f"{option}={value} must be at least {lowest}")
    if value > highest:
        raise fail(f"{option}={value} must be at most {highest:,}")
    return value


def in_zone(value: datetime | date, timezone: str) -> datetime:
    """A plain date is local midnight in `timezone`; an instant stays as it is."""
    from ledgerflow.windows import to_utc, zone

    if isinstance(value, datetime):
        return value
    try:
        return to_utc(value, time(), zone(timezone))  # the grid's rule for local wall times
    except LedgerflowError as exc:
        raise fail(str(exc)) from None


def span(
    lo: datetime | date, hi: datetime | date, timezone: str, start: str, end: str
) -> tuple[datetime, datetime]:
    """--start and --end as instants in `timezone`, the end after the start."""
    lo_at, hi_at = in_zone(lo, timezone), in_zone(hi, timezone)
    if hi_at == lo_at and type(lo) is date and type(hi) is date and hi > lo:
        # Both local days begin at one instant: the zone skipped the days between (Pacific/Apia
        # went from 2011-12-29 to 2011-12-31), so the span holds no time at all.
        raise fail(
            f"--start={start!r} to --end={end!r} holds no time in {timezone}: the zone skipped "
            "those local days; give the days around them"
        )
    if hi_at <= lo_at:
        raise fail(f"--end={end!r} must be after --start={start!r}")
    return lo_at, hi_at


def parse_span(start: str, end: str) -> tuple[datetime | date, datetime | date]:
    """--start and --end parsed; refused at once when both are of one kind and out of order
    (a date and an instant are compared once the pipeline's zone is known)."""
    lo, hi = parse_when(start, "--start"), parse_when(end, "--end")
    if isinstance(lo, datetime) == isinstance(hi, datetime):
        span(lo, hi, "UTC", start, end)
    return lo, hi


def parse_bounds(
    start: str | None, end: str | None
) -> tuple[datetime | date | None, datetime | date | None]:
    """Optional --start and --end parsed (placed with `bounds_in_zone`); both given, refused at
    once when out of order, as `parse_span` does."""
    if start and end:
        return parse_span(start, end)
    lo = parse_when(start, "--start") if start else None
    hi = parse_when(end, "--end") if end else None
    return lo, hi


def bounds_in_zone(
    lo: datetime | date | None,
    hi: datetime | date | None,
    timezone: str,
    texts: tuple[str | None, str | None] = (None, None),
) -> tuple[datetime | None, datetime | None]:
    """Optional --start and --end as instants in `timezone`; both given, the end after the
    start (an empty range would select nothing and say so, hiding the typo)."""
    if lo is not None and hi is not None:
        return span(lo, hi, timezone, texts[0] or str(lo), texts[1] or str(hi))
    return (
        None if lo is None else in_zone(lo, timezone),
        None if hi is None else in_zone(hi, timezone),
    )


WHEN = "ISO 8601 instant with offset, or a date: local midnight in the pipeline's timezone"


@app.callback()
def main() -> None:
    """Windowed batch ELT on Prefect 2: every window loaded exactly once."""
    # Nothing here starts Prefect: commands that load blocks call `need_config`/`prefect_ready`,
    # so `plan`, `demo` (which must import Prefect first, after choosing its own home) and
    # `--help` start fast.


def prefect_ready() -> None:
    """Start Prefect's ephemeral API (when there is no server) before the first block is read.

    Only commands that load blocks call this: `plan`, `demo` and `--help` never start Prefect.
    Commands that save blocks save them inside `ledgerflow.prefect_home.saving_blocks()`."""
    from ledgerflow.gctune import quick_shutdown
    from ledgerflow.prefect_home import start_ephemeral_api

    quick_shutdown()  # Prefect's heap makes the interpreter's own shutdown slow
    start_ephemeral_api()  # several commands may start at once


def need_config(name: str | None) -> str:
    """The -c value, or an error that lists the PipelineConfig blocks to choose from.

    Starts Prefect's ephemeral API first: every command that needs a pipeline loads blocks."""
    prefect_ready()
    if name:
        return name
    from ledgerflow.blocks.config import pipeline_config_names, saved_configs_sentence

    names = run_async(pipeline_config_names())
    raise fail(
        f"-c/--config NAME is needed (a PipelineConfig block); {saved_configs_sentence(names)}"
    )


ConfigOption = Annotated[
    str | None, typer.Option("--config", "-c", help="PipelineConfig block name (required)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")]


class StatusChoice(StrEnum):
    """What --status accepts, in any case: the values of `ledgerflow.ledger.Status`, spelled
    here so that a read-only command starts without importing the ledger."""

    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


StatusOption = Annotated[
    list[StatusChoice] | None,
    typer.Option(
        "--status",
        "-s",
        case_sensitive=False,
        help="PENDING, IN_PROGRESS, COMPLETED or FAILED",
    ),
]


@contextlib.asynccontextmanager
async def open_pipeline(config_name: str) -> AsyncIterator[tuple[Any, Ledger]]:
    """The validated config block and an open Ledger it points at."""
    from prefect.client.orchestration import get_client

    from ledgerflow.blocks.config import load_final_config
    from ledgerflow.wiring import load_ledger  # the ledger's block, not every block

    async with get_client() as client:  # one client for both blocks
        config = await load_final_config(config_name, client)
        ledger_block = await load_ledger(config, client)
    async with ledger_block.open() as ledger:
        await ledger.check_schema()  # a clear "run ledgerflow init" instead of a SQL error
        yield config, ledger


def prefect_api() -> str:
    """Where blocks and deployments go: the server in PREFECT_API_URL, or this machine only."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    from ledgerflow.redact import scrub_url

    url = PREFECT_API_URL.value()
    if url:
        return f"the Prefect server at {scrub_url(url)}"
    return (
        f"the local Prefect database in {PREFECT_HOME.value()} (PREFECT_API_URL is not set: "
        "a server and its workers will not see it)"
    )
