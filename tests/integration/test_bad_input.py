"""Bad input, table-driven: each case names the problem and what is allowed, changes no target
data, and leaves no window stuck IN_PROGRESS."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ledgerflow.blocks.config import validate_config
from ledgerflow.blocks.duckdb_source import DuckDBSource
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.blocks.elasticsearch import ElasticsearchSource
from ledgerflow.blocks.ledger_db import LedgerDatabase
from ledgerflow.blocks.snowflake_target import SnowflakeTarget
from ledgerflow.demo import DEMO_START
from ledgerflow.errors import ConfigError
from ledgerflow.flows.pipeline import windowed_pipeline
from ledgerflow.ledger import Status

from .kit import Pipeline

BASE: dict[str, Any] = {
    "pipeline_id": "p",
    "source_block": "a-b/c",
    "stage_block": "a-b/c",
    "target_block": "a-b/c",
}
FUTURE = (datetime.now(UTC) + timedelta(days=30)).isoformat()

# (what, build, expected words): each build must raise with those words in the message.
CONFIG_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown timezone", {"timezone": "Europe/Atlantis"}, "not a known IANA timezone"),
    ("timezone with spaces", {"timezone": " UTC"}, "not an IANA timezone name"),
    ("granularity 2x", {"granularity": "2x"}, "expected a whole number followed by m, h or d"),
    ("granularity 7h", {"granularity": "7h"}, "does not divide a day"),
    ("granularity 0m", {"granularity": "0m"}, "must be greater than zero"),
    ("granularity 36h", {"granularity": "36h"}, "whole number of days"),
    ("negative lag", {"x_time_back": "-1d"}, "not a duration"),
    ("lag in seconds", {"x_time_back": "90s"}, "not a duration"),
    ("empty pipeline id", {"pipeline_id": ""}, "pipeline_id='' is not allowed"),
    (
        "injection in pipeline id",
        {"pipeline_id": "x'; DROP TABLE pipeline_records; --"},
        "is not allowed",
    ),
    ("start in the future", {"start": FUTURE}, "is in the future"),
    ("naive start", {"start": "2025-01-01T00:00:00"}, "has no UTC offset"),
    (
        "end before start",
        {"start": "2025-02-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"},
        "must be after start",
    ),
    ("stale threshold zero", {"stale_threshold_hours": 0}, "must be > 0"),
    ("too many retries", {"max_retry_task": 50}, "between 0 and 10"),
    ("zero attempts", {"max_window_attempts": 0}, "between 1 and 100"),
    ("tolerance over 100", {"audit_tolerance_percent": 150}, "between 0 and 100"),
    ("concurrency 1000", {"concurrency": 1000}, "between 1 and 64"),
    ("unknown claim order", {"claim_order": "random"}, "claim_order"),
    ("unknown check field", {"check_fields": ["key_w"]}, "is unknown; allowed"),
    ("bad email", {"email_list": ["ops"]}, "not an email address"),
    ("bad cron", {"cron_schedule": "*/5 * *"}, "not a valid 5-field cron"),
    ("slug without name", {"source_block": "elasticsearch"}, "not a block slug"),
    ("hook without function", {"key_x_hook": "mymodule"}, "must be 'package.module:function'"),
]


@pytest.mark.parametrize(
    ("what", "fields", "words"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES]
)
def test_bad_config_values(what: str, fields: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({**BASE, **fields}, name="cfg")
    assert words in str(info.value), str(info.value)


BLOCK_CASES: list[tuple[str, type, dict[str, Any], str]] = [
    (
        "target table injection",
        DuckDBTarget,
        {"table": 'events"; DROP TABLE x; --'},
        "not a plain identifier",
    ),
    (
        "target column injection",
        DuckDBTarget,
        {"timestamp_column": "ts) OR (1=1"},
        "not a plain identifier",
    ),
    (
        "source with table and files",
        DuckDBSource,
        {"table": "t", "files": "x/*.parquet"},
        "exactly one of table or files",
    ),
    ("source glob of unknown files", DuckDBSource, {"files": "x/*.xlsx"}, "must end in one of"),
    (
        "ledger URL not async",
        LedgerDatabase,
        {"url": "postgresql://u@h/db"},
        "allowed: postgresql+asyncpg",
    ),
    ("ledger URL nonsense", LedgerDatabase, {"url": "not a url"}, "not a database URL"),
    ("es without hosts", ElasticsearchSource, {"index": "x"}, "set hosts"),
    (
        "es two auth methods",
        ElasticsearchSource,
        {"hosts": ["http://h"], "index": "x", "api_key": "k", "bearer_token": "t"},
        "set one auth method",
    ),
    (
        "es half basic auth",
        ElasticsearchSource,
        {"hosts": ["http://h"], "index": "x", "username": "u"},
        "needs both username and password",
    ),
    (
        "es two query clauses",
        ElasticsearchSource,
        {"hosts": ["http://h"], "index": "x", "query": {"term": {}, "match": {}}},
        "one query clause",
    ),
    (
        "snowflake stage url not s3",
        SnowflakeTarget,
        {"stage_url": "gs://b/p/"},
        "must be the stage's s3:// URL",
    ),
]


@pytest.mark.parametrize(
    ("what", "kind", "fields", "words"), BLOCK_CASES, ids=[c[0] for c in BLOCK_CASES]
)
def test_bad_block_fields(what: str, kind: type, fields: dict[str, Any], words: str) -> None:
    if kind is SnowflakeTarget:
        from prefect_snowflake.credentials import SnowflakeCredentials
        from prefect_snowflake.database import SnowflakeConnector

        connector = SnowflakeConnector(
            credentials=SnowflakeCredentials(account="a", user="u", password="p"),
            database="D",
            warehouse="W",
            schema="S",
        )
        fields = {"connector": connector, "table": "T", "stage": "S", **fields}
    with pytest.raises(ValueError) as info:
        kind.parse_obj(fields)
    assert words in str(info.value), str(info.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RUN_CASES = [
    (
        "source timestamp column is text",
        {"source_ts": "user_id"},
        "has type VARCHAR; allowed: TIMESTAMP",
    ),
    ("source table missing", {"source_table": "nope"}, "DuckDB source"),
    (
        "unreachable Elasticsearch",
        {"es": f"http://127.0.0.1:{_closed_port()}"},
        "cannot reach Elasticsearch",
    ),
    ("Elasticsearch index missing", {"es_index": "missing-index"}, "does not exist"),
]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(("what", "case", "words"), RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_bad_input_at_run_time_fails_clearly_and_changes_nothing(
    what: str, case: dict[str, str], words: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pipeline = Pipeline(tmp_path, rows=500)
    # A first, good run loads the first window, so "unchanged" means something.
    name = asyncio.run(pipeline.save(end=DEMO_START + timedelta(hours=2)))
    assert asyncio.run(windowed_pipeline(config_block=name, return_state=True)).is_completed()
    before = pipeline.warehouse_rows()
    overrides: dict[str, Any] = {"end": DEMO_START + timedelta(hours=4), "max_retry_task": 1}
    if "es" in case or "es_index" in case:
        url = case.get("es") or request.getfixturevalue("osmem_url")
        ElasticsearchSource.parse_obj(
            {
                "hosts": [url],
                "index": case.get("es_index", "events"),
                "compatibility_headers": False,
                "max_retries": 0,
                "request_timeout": 2,
            }
        ).save(name, overwrite=True)
        overrides["source_block"] = f"ledgerflow-elasticsearch-source/{name}"
    else:
        DuckDBSource.parse_obj(
            {
                "path": str(pipeline.source_path),
                "table": case.get("source_table", "web_events"),
                "timestamp_column": case.get("source_ts", "ts"),
            }
        ).save(f"{name}-bad", overwrite=True)
        overrides["source_block"] = f"ledgerflow-duckdb-source/{name}-bad"
    asyncio.run(pipeline.save(**overrides))
    state = asyncio.run(windowed_pipeline(config_block=name, return_state=True))
    assert state.is_failed()
    rows = asyncio.run(pipeline.records())
    assert [r.pipeline_status for r in rows] == [Status.COMPLETED, Status.FAILED]
    assert words in (rows[1].error_message or ""), rows[1].error_message
    assert pipeline.warehouse_rows() == before
