"""Bad input, table-driven: each case names the problem and what is allowed, changes no target
data, and leaves no window stuck IN_PROGRESS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
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
from prefect_snowflake.credentials import SnowflakeCredentials
from prefect_snowflake.database import SnowflakeConnector

from tests.netkit import free_port

from .kit import Pipeline
from .warehouse_kit import Peers, refusing_peer, s3_auth_enforced

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
        {"hosts": ["http://h:9200"], "index": "x", "api_key": "k", "bearer_token": "t"},
        "set one auth method",
    ),
    (
        "es half basic auth",
        ElasticsearchSource,
        {"hosts": ["http://h:9200"], "index": "x", "username": "u"},
        "needs both username and password",
    ),
    (
        "es two query clauses",
        ElasticsearchSource,
        {"hosts": ["http://h:9200"], "index": "x", "query": {"term": {}, "match": {}}},
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


@dataclass
class Bad:
    """What one run-time case can reach: the pipeline, its block name, fixtures, contexts."""

    pipeline: Pipeline
    name: str
    request: pytest.FixtureRequest
    during: contextlib.ExitStack

    def save(self, block: Any, role: str) -> dict[str, str]:
        block.save(f"{self.name}-bad", overwrite=True)
        return {f"{role}_block": f"{block.get_block_type_slug()}/{self.name}-bad"}

    def duckdb_source(self, **fields: str) -> dict[str, str]:
        path = {"path": str(self.pipeline.source_path), "table": "web_events"}
        return self.save(DuckDBSource.parse_obj({**path, **fields}), "source")

    def es_source(self, url: str | None = None, **fields: Any) -> dict[str, str]:
        hosts = [url or self.request.getfixturevalue("osmem_url")]
        # A generous timeout (why: a machine busy with other tests); no case here waits it out.
        base = {"index": "events", "compatibility_headers": False, "request_timeout": 10}
        es = ElasticsearchSource.parse_obj({"hosts": hosts, **base, "max_retries": 0, **fields})
        return self.save(es, "source")

    def s3_stage(self, key: str, secret: str) -> dict[str, str]:
        peers: Peers = self.request.getfixturevalue("peers")
        stage = peers.stage(peers.new_bucket())
        stage = stage.copy(update={"bucket": stage.bucket.copy()})
        stage.bucket.credentials = peers.credentials(key, secret)
        self.during.enter_context(s3_auth_enforced())
        return self.save(stage, "stage")


def text_timestamp(bad: Bad) -> dict[str, str]:
    return bad.duckdb_source(timestamp_column="user_id")


def missing_table(bad: Bad) -> dict[str, str]:
    return bad.duckdb_source(table="nope")


def unreachable_es(bad: Bad) -> dict[str, str]:
    return bad.es_source(f"http://127.0.0.1:{free_port()}")


def missing_index(bad: Bad) -> dict[str, str]:
    return bad.es_source(index="missing-index")


def es_refuses_the_api_key(bad: Bad) -> dict[str, str]:
    refusal = {
        "error": {"type": "security_exception", "reason": "unable to authenticate with api key"},
        "status": 401,
    }
    host, port = bad.during.enter_context(refusing_peer(401, refusal))
    return bad.es_source(f"http://{host}:{port}", api_key="not-a-valid-key")


def es_timestamp_mapped_as_text(bad: Bad) -> dict[str, str]:
    url = bad.request.getfixturevalue("osmem_url")
    mapping = {"mappings": {"properties": {"@timestamp": {"type": "keyword"}}}}
    create = urllib.request.Request(
        f"{url}/events-keyword-ts",
        data=json.dumps(mapping).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with contextlib.suppress(urllib.error.HTTPError):  # exists from an earlier run
        urllib.request.urlopen(create, timeout=10).close()
    return bad.es_source(url, index="events-keyword-ts")


def s3_unknown_access_key(bad: Bad) -> dict[str, str]:
    return bad.s3_stage("AKIAUNKNOWNLEDGERFLW", "whatever-secret")


def s3_wrong_secret_key(bad: Bad) -> dict[str, str]:
    peers: Peers = bad.request.getfixturevalue("peers")
    iam = peers.credentials().get_boto3_session().client("iam", endpoint_url=peers.s3_endpoint)
    user = f"lf-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
    return bad.s3_stage(key, "not-the-secret-of-this-key")


def snowflake_refuses_the_password(bad: Bad) -> dict[str, str]:
    refusal = {
        "data": None,
        "code": "390100",
        "message": "Incorrect username or password was specified.",
        "success": False,
    }
    host, port = bad.during.enter_context(refusing_peer(200, refusal))
    credentials = SnowflakeCredentials(account="acme", user="loader", password="wrong-password")
    target = SnowflakeTarget(
        connector=SnowflakeConnector(
            credentials=credentials, database="D", warehouse="W", schema="PUBLIC"
        ),
        table="EVENTS",
        stage="LEDGERFLOW_STAGE",
        stage_url="s3://bucket/ledgerflow/",
        connect_args={"host": host, "port": port, "protocol": "http", "login_timeout": 10},
    )
    # As if the pipeline had always loaded into this Snowflake table: a run into a target other
    # than the recorded one is refused before it connects (test_retarget.py).
    ledger = sqlite3.connect(bad.pipeline.root / "ledger.db")
    with ledger:
        ledger.execute(
            "UPDATE ledgerflow_pipelines SET target = ? WHERE pipeline_id = ?",
            (target.identity(), bad.name),
        )
    ledger.close()
    return bad.save(target, "target")


def target_lost_a_column(bad: Bad) -> dict[str, str]:
    bad.pipeline._scalar_row(
        bad.pipeline.warehouse, "ALTER TABLE web_events DROP COLUMN user_id; SELECT 1"
    )
    return {}


RUN_CASES: list[tuple[str, Callable[[Bad], dict[str, str]], str]] = [
    ("source timestamp column is text", text_timestamp, "has type VARCHAR; allowed: TIMESTAMP"),
    ("source table missing", missing_table, "DuckDB source"),
    ("unreachable Elasticsearch", unreachable_es, "cannot reach Elasticsearch"),
    ("Elasticsearch index missing", missing_index, "does not exist"),
    ("Elasticsearch refuses the API key", es_refuses_the_api_key, "refused the credentials"),
    ("Elasticsearch timestamp not a date", es_timestamp_mapped_as_text, "is not mapped as a date"),
    (
        "S3 access key unknown",
        s3_unknown_access_key,
        "the access key id is not known (InvalidAccessKeyId)",
    ),
    (
        "S3 secret key wrong",
        s3_wrong_secret_key,
        "the secret access key does not match (SignatureDoesNotMatch)",
    ),
    (
        "Snowflake refuses the password",
        snowflake_refuses_the_password,
        "the user name or password is wrong",
    ),
    ("target lost a column", target_lost_a_column, "refused the load (a schema change?)"),
]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(("what", "setup", "words"), RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_bad_input_at_run_time_fails_clearly_and_changes_nothing(
    what: str,
    setup: Callable[[Bad], dict[str, str]],
    words: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    pipeline = Pipeline(tmp_path, rows=500)
    # A first, good run loads the first window, so "unchanged" means something.
    name = asyncio.run(pipeline.save(end=DEMO_START + timedelta(hours=2)))
    assert asyncio.run(windowed_pipeline(config_block=name, return_state=True)).is_completed()
    with contextlib.ExitStack() as during:
        overrides = setup(Bad(pipeline, name, request, during))
        before = pipeline.warehouse_rows()
        end = DEMO_START + timedelta(hours=4)
        asyncio.run(pipeline.save(end=end, max_retry_task=1, **overrides))
        state = asyncio.run(windowed_pipeline(config_block=name, return_state=True))
    assert state.is_failed()
    rows = asyncio.run(pipeline.records())
    assert [r.pipeline_status for r in rows] == [Status.COMPLETED, Status.FAILED]
    assert words in (rows[1].error_message or ""), rows[1].error_message
    assert pipeline.warehouse_rows() == before
