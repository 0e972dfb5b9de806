"""`Target.identity()`: one text per place a pipeline loads into, with no secret in it. Two
places must never share one (a move between them would go unnoticed); spellings of one place
that can be told apart without connecting share one."""

from __future__ import annotations

from pathlib import Path

import pytest
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.blocks.snowflake_target import SnowflakeTarget
from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials


def duck(path: str, table: str) -> str:
    return DuckDBTarget(path=path, table=table).identity()


def test_duckdb_spellings_of_one_table_share_an_identity(tmp_path: Path) -> None:
    file = str(tmp_path / "warehouse.duckdb")
    same = {
        duck(file, t)
        for t in ("web_events", "WEB_EVENTS", "main.web_events", "warehouse.main.Web_Events")
    }
    assert same == {f"duckdb:{tmp_path.resolve() / 'warehouse.duckdb'}#web_events"}


def test_duckdb_places_that_differ_never_share_an_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = str(tmp_path / "warehouse.duckdb")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    relative_in_a = duck("warehouse.duckdb", "web_events")
    monkeypatch.chdir(tmp_path / "b")
    relative_in_b = duck("warehouse.duckdb", "web_events")
    (tmp_path / "link.duckdb").symlink_to(file)
    others = [
        duck(file, "web_events"),
        duck(file, "web_events_v2"),
        duck(file, "analytics.web_events"),  # a schema, or the file's catalog: told apart
        duck(str(tmp_path / "other.duckdb"), "web_events"),
        relative_in_a,
        relative_in_b,
    ]
    assert len(set(others)) == len(others), others
    assert duck(str(tmp_path / "link.duckdb"), "web_events") == duck(file, "web_events")


def snow(table: str = "EVENTS", **kw: object) -> str:
    connector = kw.pop("connector", None) or SnowflakeConnector(
        credentials=SnowflakeCredentials(
            account=str(kw.pop("account", "xy12345")), user="loader", password="s3cret-pw"
        ),
        database=str(kw.pop("database", "ANALYTICS")),
        warehouse="W",
        schema=str(kw.pop("schema", "PUBLIC")),
    )
    target = SnowflakeTarget(
        connector=connector,
        table=table,
        stage="S",
        stage_url="s3://bucket/x/",
        connect_args=dict(kw.pop("connect_args", {})),  # type: ignore[call-overload]
    )
    return target.identity()


def test_snowflake_identity_resolves_names_as_snowflake_does_and_holds_no_secret() -> None:
    base = snow()
    assert base == "snowflake:xy12345/ANALYTICS.PUBLIC.EVENTS"
    assert snow(database="analytics", schema="public") == base  # unquoted: upper case
    assert snow("ANALYTICS.PUBLIC.EVENTS") == base
    assert snow(account="XY12345") == base
    different = [
        snow("events"),  # ledgerflow quotes every table name: case counts
        snow(database='"analytics"'),
        snow(schema="STAGING"),
        snow(connect_args={"account": "zz99999"}),  # get_client lets it override the account
        snow(connect_args={"host": "xy12345.privatelink.snowflakecomputing.com"}),
    ]
    assert base not in different and len(set(different)) == len(different), different
    assert "s3cret" not in "".join([base, *different])
