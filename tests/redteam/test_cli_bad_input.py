"""Red team: bad option values on the `ledgerflow` command line.

The promise: "every bad input gets a clear error that names what was wrong and what is allowed,
and nothing is lost or half-written". On the CLI: exit 2, one `error: ...` line naming the
option, no traceback, and every ledger row as it was. Each case runs against a real Prefect API
and a real ledger (SQLite and Postgres) holding COMPLETED, IN_PROGRESS and FAILED windows and a
second pipeline's windows. The twelve breaks this file found (FINDINGS.md, wave 7) failed
before their fixes; the inputs that held are kept beside them."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import Result
from ledgerflow.blocks.ledger_db import LedgerDatabase
from ledgerflow.cli import app
from ledgerflow.demo import DEMO_START
from ledgerflow.ledger.models import CURRENT_TABLES
from sqlalchemy.ext.asyncio import create_async_engine

from tests.integration.kit import Pipeline
from tests.pgkit import asyncpg_url, create_database, drop_database

from .helpers import run, runner

pytestmark = pytest.mark.usefixtures("prefect_harness")


@dataclass
class Ledgered:
    """A pipeline of four 2h windows (COMPLETED, COMPLETED, IN_PROGRESS, FAILED), and another
    pipeline's two COMPLETED windows in the same ledger."""

    pipeline: Pipeline
    name: str
    other: str
    failed_id: int
    other_id: int
    backend: str


async def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every ledger table: statuses, counts, attempts, force flags, fences."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return {
                t.name: sorted((await conn.execute(sa.select(t))).all(), key=repr)
                for t in CURRENT_TABLES
            }
    finally:
        await engine.dispose()


def build(root: Path, url: str, backend: str) -> Ledgered:
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    pipeline = Pipeline(root / "a", rows=300, ledger_url=url)
    end = DEMO_START + timedelta(hours=8)
    name = asyncio.run(pipeline.save(end=end, windows_per_run=2, concurrency=1))
    assert run(name).is_completed()
    other = Pipeline(root / "b", rows=100, ledger_url=url)
    other_name = asyncio.run(other.save(end=DEMO_START + timedelta(hours=4)))
    assert run(other_name).is_completed()
    asyncio.run(pipeline.dead_worker(name, ago=timedelta(hours=3)))  # the third: IN_PROGRESS

    async def fail_the_fourth() -> tuple[int, int]:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                [(failed,)] = (
                    await conn.execute(
                        sa.text(
                            "UPDATE pipeline_records SET pipeline_status = 'FAILED', "
                            "error_message = 'boom', retry_attempt = 1 "
                            "WHERE pipeline_id = :p AND pipeline_status = 'PENDING' RETURNING id"
                        ),
                        {"p": name},
                    )
                ).all()
                other_id = await conn.scalar(
                    sa.text("SELECT min(id) FROM pipeline_records WHERE pipeline_id = :p"),
                    {"p": other_name},
                )
        finally:
            await engine.dispose()
        return int(failed), int(other_id)

    failed_id, other_id = asyncio.run(fail_the_fourth())
    return Ledgered(pipeline, name, other_name, failed_id, other_id, backend)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_admin_dsn: str
) -> Iterator[Ledgered]:
    """One pipeline per backend for the whole module: the cases here must not change it."""
    root = tmp_path_factory.mktemp("badinput")
    if request.param == "sqlite":
        yield build(root, f"sqlite+aiosqlite:///{root / 'ledger.db'}", "sqlite")
        return
    database = asyncio.run(create_database(pg_admin_dsn))
    try:
        yield build(root, asyncpg_url(pg_admin_dsn, database), "postgres")
    finally:
        asyncio.run(drop_database(pg_admin_dsn, database))


def invoke(ledgered: Ledgered, *args: str) -> Result:
    """`ledgerflow` with `args` (NAME, OTHER, FAILED and OTHER_ID filled in)."""
    values = {
        "NAME": ledgered.name,
        "OTHER_ID": str(ledgered.other_id),
        "OTHER": ledgered.other,
        "FAILED": str(ledgered.failed_id),
    }
    filled = []
    for arg in args:
        for key, value in values.items():
            arg = arg.replace(key, value)
        filled.append(arg)
    return runner.invoke(app, filled)


def uncaught(result: Result) -> BaseException | None:
    """What a user's terminal would show as a traceback: an exception that is not an exit."""
    return None if isinstance(result.exception, SystemExit) else result.exception


def assert_refused(result: Result, *words: str) -> str:
    """Exit 2, no traceback, one `error:` line holding each of `words`; that line."""
    assert uncaught(result) is None, f"traceback: {result.exception!r}"
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def refused_unchanged(ledgered: Ledgered, args: tuple[str, ...], *words: str) -> str:
    """`args` refused (see `assert_refused`) with every ledger row as it was; the error line."""
    before = asyncio.run(snapshot(ledgered.pipeline.ledger_url))
    result = invoke(ledgered, *args)
    after = asyncio.run(snapshot(ledgered.pipeline.ledger_url))
    line = assert_refused(result, *words)
    assert after == before, "the ledger changed"
    return line


# --- what held (not covered elsewhere) -----------------------------------------------------------

HELD: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("windows", "-c", "NAME", "--start", "2025-02-30"), ("--start='2025-02-30'", "ISO 8601")),
    (
        ("reload", "-c", "NAME", "--start", "2025-03-09T02:30", "--end", "2025-03-10"),
        ("--start='2025-03-09T02:30' has no UTC offset",),
    ),
    (
        ("retry", "-c", "NAME", "--end", "2025-11-02T01:30"),
        ("--end='2025-11-02T01:30' has no UTC offset",),
    ),
    (
        ("windows", "-c", "NAME", "--start", "2025-03-08T00:00:00+24:00"),
        ("--start='2025-03-08T00:00:00+24:00'", "ISO 8601"),
    ),
    (("retile", "-c", "NAME", "--at", "2025-03-08T09:00:00Z"), ("not a window boundary",)),
    (("retile", "-c", "NAME", "--at", "2025-03-08T09:00:00"), ("--at=", "has no UTC offset")),
    (("retry", "-c", "NAME", "--id", "0"), ("--id 0 is not a window of NAME",)),
    (("retry", "-c", "NAME", "--id", "-1"), ("--id -1 is not a window of NAME",)),
    (("retry", "-c", "NAME", "--id", "OTHER_ID"), ("--id OTHER_ID is not a window of NAME",)),
    (("retry", "-c", "NAME", "--id", "2147483647"), ("--id 2147483647 is not a window",)),
    (("rescan", "-c", "NAME", "--last", "-1"), ("--last=-1 must be at least 1",)),
    *[
        (("release", "-c", "NAME", "--older-than", age, "--json"), (f"--older-than='{age}'",))
        for age in ("0", "-5m", "1.5h", "90", "1h30m", "P1D", "30M", "99999999d")
    ],
]


@pytest.mark.parametrize(("args", "words"), HELD, ids=[" ".join((a[0], *a[3:])) for a, _ in HELD])
def test_bad_values_that_are_refused_in_one_line_and_change_nothing(
    shared: Ledgered, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    words = tuple(
        w.replace("OTHER_ID", str(shared.other_id)).replace("NAME", shared.name) for w in words
    )
    refused_unchanged(shared, args, *words)


def test_instants_on_either_side_of_a_dst_change_are_read_as_given(shared: Ledgered) -> None:
    """2025-03-09T02:30 does not exist in Los Angeles and 2025-11-02T01:30 happens twice: given
    with an offset each is one instant, and nothing is changed by reading them."""
    before = asyncio.run(snapshot(shared.pipeline.ledger_url))
    for start, end in [
        ("2025-03-09T02:30:00-08:00", "2025-03-09T04:00:00-07:00"),
        ("2025-11-02T01:30:00-07:00", "2025-11-02T01:30:00-08:00"),
        ("2025-03-08T00:00:00+14:00", "2025-03-08T00:00:00-12:00"),
    ]:
        result = invoke(shared, "windows", "-c", "NAME", "--start", start, "--end", end, "--json")
        assert result.exit_code == 0 and uncaught(result) is None, result.output
    result = invoke(
        shared, "windows", "-c", "NAME", "--start", "2025-03-08T00:00:00+14:00", "--json"
    )
    assert result.exit_code == 0, result.output
    # +14:00 midnight is 10:00Z the day before: all four windows start after it.
    assert len(json.loads(result.stdout)) == 4
    assert asyncio.run(snapshot(shared.pipeline.ledger_url)) == before


# --- breaks -------------------------------------------------------------------------------------

EDGE_OF_CALENDAR: list[tuple[str, ...]] = [
    ("windows", "-c", "NAME", "--end", "9999-12-31T23:00:00-05:00"),
    ("windows", "-c", "NAME", "--start", "0001-01-01T00:00:00+01:00"),
    ("retry", "-c", "NAME", "--end", "9999-12-31T23:00:00-05:00"),
    ("reload", "-c", "NAME", "--start", "2025-03-08", "--end", "9999-12-31T23:00:00-05:00"),
    ("backfill", "-c", "NAME", "--start", "0001-01-01", "--end", "0001-01-02", "--dry-run"),
    ("backfill", "-c", "NAME", "--start", "9999-12-30", "--end", "9999-12-31", "--dry-run"),
    ("retile", "-c", "NAME", "--at", "9999-12-31T23:00:00-05:00"),
    (
        "plan",
        "--timezone",
        "America/Los_Angeles",
        "--granularity",
        "2h",
        "--start",
        "0001-01-01",
        "--end",
        "0001-01-02",
    ),
]


@pytest.mark.parametrize(
    "args", EDGE_OF_CALENDAR, ids=[" ".join((a[0], *a[3:])) for a in EDGE_OF_CALENDAR]
)
def test_an_instant_at_the_edge_of_the_calendar_is_refused_naming_the_option(
    shared: Ledgered, args: tuple[str, ...]
) -> None:
    line = refused_unchanged(shared, args)
    named = [a for a in args if a in ("--start", "--end", "--at")]
    assert any(option in line for option in named), line


HUGE = "9223372036854775808"  # 2**63: past SQLite's INTEGER and Postgres' bigint


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("windows", "-c", "NAME", "--limit", HUGE), "--limit"),
        (("retry", "-c", "NAME", "--id", HUGE), "--id"),
        (("rescan", "-c", "NAME", "--last", HUGE, "--dry-run"), "--last"),
        (("retry", "-c", "NAME", "--id", "2147483648"), "--id"),  # past Postgres' integer id
    ],
    ids=["windows --limit 2**63", "retry --id 2**63", "rescan --last 2**63", "retry --id 2**31"],
)
def test_an_integer_too_large_for_the_ledger_is_refused_naming_the_option(
    shared: Ledgered, args: tuple[str, ...], option: str
) -> None:
    """Before the fix: on SQLite an OverflowError traceback ("Python int too large to convert
    to SQLite INTEGER"); on Postgres "the ledger database refused the request: ... DataError:
    invalid input for query argument $2 ... (value out of int64 range)", naming no option."""
    refused_unchanged(shared, args, option)


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_windows_limit_below_one_is_refused(shared: Ledgered, limit: str) -> None:
    refused_unchanged(shared, ("windows", "-c", "NAME", "--limit", limit), "--limit")


@pytest.mark.parametrize(
    "args",
    [
        ("retry", "-c", "NAME", "--start", "2025-03-09", "--end", "2025-03-08"),
        ("retry", "-c", "NAME", "--start", "2025-03-08T14:00:00Z", "--end", "2025-03-08T14:00:00Z"),
        ("retry", "-c", "NAME", "--json", "--start", "2025-03-09", "--end", "2025-03-08"),
        ("windows", "-c", "NAME", "--start", "2025-03-09", "--end", "2025-03-08"),
        ("windows", "-c", "NAME", "--json", "--start", "2025-03-09", "--end", "2025-03-08"),
    ],
    ids=["retry after", "retry equal", "retry --json", "windows after", "windows --json"],
)
def test_an_inverted_or_empty_range_is_refused_like_reload_does(
    shared: Ledgered, args: tuple[str, ...]
) -> None:
    refused_unchanged(shared, args, "--end=", "must be after --start=")


@pytest.mark.parametrize(
    "bounds",
    [("--start", "2025-03-09"), ("--end", "2025-03-08"), ("--json", "--start", "2025-03-09")],
    ids=["start after it", "end before it", "json"],
)
def test_retry_of_a_named_failed_window_outside_the_range_is_refused(
    shared: Ledgered, bounds: tuple[str, ...]
) -> None:
    refused_unchanged(shared, ("retry", "-c", "NAME", "--id", "FAILED", *bounds), "--id")


def test_a_backfill_with_nothing_eligible_says_so_in_words(shared: Ledgered) -> None:
    before = asyncio.run(snapshot(shared.pipeline.ledger_url))
    result = invoke(
        shared, "backfill", "-c", "NAME", "--start", "2099-01-01", "--end", "2099-01-02"
    )
    assert asyncio.run(snapshot(shared.pipeline.ledger_url)) == before
    assert result.exit_code == 0 and uncaught(result) is None, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "None" not in lines[0], result.output


@pytest.mark.parametrize(
    "args",
    [("status", "-c", ".."), ("windows", "-c", "../../.."), ("retry", "-c", "..", "--json")],
    ids=["status ..", "windows ../../..", "retry .. --json"],
)
def test_a_config_name_that_is_a_path_gets_one_line(args: tuple[str, ...]) -> None:
    assert_refused(runner.invoke(app, list(args)), f"no pipeline config block named {args[2]!r}")


@pytest.mark.parametrize("count", ["0", "-1"])
def test_run_with_max_windows_below_one_is_refused_and_changes_nothing(
    tmp_path: Path, count: str
) -> None:
    pipeline = Pipeline(tmp_path, rows=200)
    name = asyncio.run(pipeline.save(end=DEMO_START + timedelta(hours=4)))
    assert runner.invoke(app, ["init", "-c", name]).exit_code == 0
    before = asyncio.run(snapshot(pipeline.ledger_url))
    result = runner.invoke(app, ["run", "-c", name, "--max-windows", count])
    after = asyncio.run(snapshot(pipeline.ledger_url))
    assert not pipeline.warehouse.exists() or pipeline.warehouse_rows() == (0, 0)
    assert_refused(result, "--max-windows")
    assert after == before


def test_a_backfill_past_the_configs_end_registers_nothing_there(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, rows=300)
    end = DEMO_START + timedelta(hours=4)
    name = asyncio.run(pipeline.save(end=end))
    assert run(name).is_completed()
    assert runner.invoke(app, ["status", "-c", name]).exit_code == 0
    result = runner.invoke(
        app, ["backfill", "-c", name, "--start", "2025-03-09", "--end", "2025-03-10"]
    )
    assert uncaught(result) is None, result.exception
    past = [r for r in asyncio.run(pipeline.records()) if r.window_start_time >= end]
    assert past == [], f"{len(past)} window(s) registered after the config's end: {result.output}"
    assert "end" in result.output.replace("--end", ""), result.output
    assert runner.invoke(app, ["status", "-c", name]).exit_code == 0


@pytest.mark.parametrize("command", ["init", "blocks register"])
def test_every_command_takes_json(tmp_path: Path, command: str) -> None:
    pipeline = Pipeline(tmp_path, rows=10)
    name = asyncio.run(pipeline.save())
    if command == "init":
        args = ["init", "-c", name, "--json"]
    else:
        path, _ = blocks_file(tmp_path, '"also-good"')
        args = ["blocks", "register", "--file", str(path), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)


def blocks_file(tmp_path: Path, second_name: str) -> tuple[Path, str]:
    """A blocks file whose first block is good and whose second has `second_name`."""
    good = f"good-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "blocks.toml"
    path.write_text(
        f'[first]\ntype = "ledgerflow-ledger-database"\nname = "{good}"\n'
        'url = "sqlite+aiosqlite:///ledger.db"\n'
        f'[second]\ntype = "ledgerflow-ledger-database"\nname = {second_name}\n'
        'url = "sqlite+aiosqlite:///ledger.db"\n'
    )
    return path, good


@pytest.mark.parametrize("second", ['"Web Events"', '"a/b"', '["x"]'])
def test_blocks_register_refuses_a_bad_block_name_and_saves_nothing(
    tmp_path: Path, second: str
) -> None:
    path, good = blocks_file(tmp_path, second)
    result = runner.invoke(app, ["blocks", "register", "--file", str(path)])
    saved = True
    try:
        LedgerDatabase.load(good)
    except ValueError:
        saved = False
    assert not saved, "the block before the bad one was saved: the file was half-registered"
    assert_refused(result, "[second]", "name")


def test_blocks_register_refuses_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "blocks.toml"
    path.write_text('[ledger]\ntype = "ledgerflow-ledger-database"\n', encoding="utf-16")
    result = runner.invoke(app, ["blocks", "register", "--file", str(path)])
    assert_refused(result, "cannot read block file", str(path))


def test_blocks_register_of_an_empty_file_says_nothing_was_saved(tmp_path: Path) -> None:
    path = tmp_path / "blocks.toml"
    path.write_text("# nothing yet\n")
    result = runner.invoke(app, ["blocks", "register", "--file", str(path)])
    assert uncaught(result) is None, result.exception
    text = result.output.lower()
    assert "no block" in text or "nothing" in text, result.output
