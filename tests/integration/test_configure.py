"""Configuration mistakes fail when a block is built or saved (or, for blocks saved earlier, when
the flow starts), each naming the field, the value and what is allowed; never at run time after
retries. Blocks still save and load through a real Prefect API."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from ledgerflow.blocks.catalog import ALL_BLOCKS, MISSING
from ledgerflow.blocks.config import PipelineConfig, load_final_config, validate_config
from ledgerflow.blocks.duckdb_source import DuckDBSource
from ledgerflow.blocks.elasticsearch import ElasticsearchSource
from ledgerflow.blocks.kinds import KIND_OF_TYPE, kinds_of_class
from ledgerflow.blocks.ledger_db import LedgerDatabase
from ledgerflow.blocks.local_stage import LocalStage
from ledgerflow.blocks.s3_stage import S3Stage
from ledgerflow.blocks.snowflake_target import SnowflakeTarget
from ledgerflow.cli import app
from ledgerflow.compat import SecretStr, field_aliases, model_dump, model_validate
from ledgerflow.demo import DEMO_START
from ledgerflow.errors import ConfigError
from ledgerflow.flows.pipeline import windowed_pipeline
from ledgerflow.ledger import Status
from ledgerflow.ports import Source, Stage
from ledgerflow.windows import Window, window_containing
from ledgerflow.wiring import load_block
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect_aws import AwsCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters
from prefect_snowflake.credentials import SnowflakeCredentials
from prefect_snowflake.database import SnowflakeConnector
from typer.testing import CliRunner

from .kit import Pipeline

BASE: dict[str, Any] = {
    "pipeline_id": "web_events",
    "source_block": "ledgerflow-duckdb-source/x",
    "stage_block": "ledgerflow-local-stage/x",
    "target_block": "ledgerflow-duckdb-target/x",
}


def no_windows(pipeline: Pipeline) -> bool:
    """The flow failed before it created the ledger's tables or registered any window."""
    path = Path(pipeline.ledger_url.removeprefix("sqlite+aiosqlite:///"))
    if not path.exists():
        return True
    with contextlib.closing(sqlite3.connect(path)) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "pipeline_records" not in tables:
            return True
        return int(con.execute("SELECT count(*) FROM pipeline_records").fetchone()[0]) == 0


def register(tmp_path: Path, toml: str) -> tuple[int, str]:
    path = tmp_path / "blocks.toml"
    path.write_text(toml)
    result = CliRunner().invoke(app, ["blocks", "register", "--file", str(path)])
    return result.exit_code, result.output


# --- unknown fields -----------------------------------------------------------------------------


def test_a_misspelled_config_field_is_refused_with_the_closest_field() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config({**BASE, "windows_per_rum": 50}, name="web")
    assert "'windows_per_rum' is not a field; did you mean 'windows_per_run'?" in str(caught.value)


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.__name__)
def test_every_block_refuses_an_unknown_field(block: type[Block]) -> None:
    aliases = field_aliases(block)
    field = aliases[max(aliases)]  # the alias of the last field by name
    typo = field[:-1] + ("x" if field[-1] != "x" else "y")
    with pytest.raises(ValueError) as caught:
        model_validate(block, {typo: "1"})
    assert f"{typo!r} is not a field; did you mean {field!r}?" in str(caught.value)
    with pytest.raises(ValueError, match="'zzzzzz' is not a field; allowed: "):
        model_validate(block, {"zzzzzz": "1"})


@pytest.mark.usefixtures("prefect_harness")
def test_blocks_register_names_the_section_and_the_field_and_saves_nothing(
    tmp_path: Path,
) -> None:
    name = f"typo-{uuid.uuid4().hex[:8]}"
    code, output = register(
        tmp_path,
        f"""
[ledger]
type = "ledgerflow-ledger-database"
name = "{name}"
url = "sqlite+aiosqlite:///ledger.db"

[source]
type = "ledgerflow-duckdb-source"
name = "{name}"
path = "events.duckdb"
table = "events"
timestamp_colum = "ts"
""",
    )
    assert code == 2, output
    assert (
        "error: block [source] is invalid: 'timestamp_colum' is not a field; "
        "did you mean 'timestamp_column'?"
    ) in output
    with pytest.raises(ValueError, match="Unable to find block document"):
        LedgerDatabase.load(name)  # nothing saved: the file is refused whole


# --- save and load through Prefect --------------------------------------------------------------


def every_block(tmp_path: Path) -> list[Block]:
    credentials = AwsCredentials(
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key=SecretStr("aws-secret"),
        region_name="us-east-1",
    )
    connector = SnowflakeConnector(
        credentials=SnowflakeCredentials(account="acme", user="u", password=SecretStr("sf-pw")),
        database="D",
        warehouse="W",
        schema="PUBLIC",
    )
    return [
        model_validate(LedgerDatabase, {"url": f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"}),
        model_validate(DuckDBSource, {"path": "events.duckdb", "table": "events"}),
        model_validate(LocalStage, {"root": str(tmp_path / "stage")}),
        S3Stage(bucket=S3Bucket(bucket_name="b", credentials=credentials), prefix="lf"),
        SnowflakeTarget(
            connector=connector, table="T", stage="S", stage_url="s3://b/lf/", create_table=True
        ),
        model_validate(
            ElasticsearchSource,
            {"hosts": ["https://es.example.com:9200"], "index": "logs-*", "api_key": "k"},
        ),
        validate_config({**BASE, "windows_per_run": 7}),
    ]


def plain(value: Any) -> Any:
    """A block's dict with secrets unwrapped (Prefect loads a nested block's secrets as str)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def data(block: Block) -> dict[str, Any]:
    """The block's data: its dict without the metadata of the document it was saved as."""
    metadata = {"_block_document_id", "_block_document_name", "_is_anonymous"}
    return {k: v for k, v in plain(model_dump(block)).items() if k not in metadata}


@pytest.mark.usefixtures("prefect_harness")
def test_every_block_saves_loads_and_saves_again(tmp_path: Path) -> None:
    name = f"rt-{uuid.uuid4().hex[:8]}"
    for block in every_block(tmp_path):
        block.save(name, overwrite=True)
        loaded = type(block).load(name)
        assert loaded._block_document_id is not None
        assert loaded._block_document_name == name
        assert plain(model_dump(loaded)) == plain(model_dump(block)), type(block).__name__
        loaded.save(name, overwrite=True)  # Prefect's own metadata does not trip the check
        assert "_block_document_id" in model_dump(loaded)
        again = model_validate(type(block), model_dump(loaded, by_alias=True))
        # The data comes back whole. The saved document's identity does not on Prefect 3 (its
        # Block.model_validate drops `_block_document_id` and the like, where Prefect 2 kept
        # them as extra keys): it names a document, it is not the block's data.
        assert data(again) == data(loaded)
        again = Block.load(f"{block.get_block_type_slug()}/{name}")
        assert plain(model_dump(again)) == plain(model_dump(block))


def _create_document(block_class: type[Block], name: str, data: dict[str, Any]) -> None:
    """A block document written as an older ledgerflow (or the API, or the UI) wrote it."""

    async def run() -> None:
        await block_class.register_type_and_schema()
        async with get_client() as client:
            block_type = await client.read_block_type_by_slug(block_class.get_block_type_slug())
            schema = await client.read_block_schema_by_checksum(
                block_class._calculate_schema_checksum()
            )
            from prefect.client.schemas.actions import BlockDocumentCreate

            await client.create_block_document(
                BlockDocumentCreate(
                    name=name,
                    data=data,
                    block_type_id=block_type.id,
                    block_schema_id=schema.id,
                )
            )

    asyncio.run(run())


# What the code before this change stored for a PipelineConfig (Prefect drops unknown keys on
# save, so its documents hold exactly the schema's fields).
PREVIOUS_DOCUMENT: dict[str, Any] = {
    "pipeline_id": "web_events",
    "timezone": "America/Los_Angeles",
    "x_time_back": "1d",
    "granularity": "2h",
    "stale_threshold_hours": 2.0,
    "start": None,
    "end": None,
    "cron_schedule": "0 */2 * * *",
    "email_list": [],
    "email_on_failure": True,
    "email_on_retry": False,
    "notification_block": None,
    "max_retry_task": 3,
    "retry_backoff_seconds": 10.0,
    "max_window_attempts": 3,
    "check_fields": ["key_x", "key_y", "key_z"],
    "key_x_hook": None,
    "key_y_hook": None,
    "key_z_hook": None,
    "default_record": {
        "source_name": "elasticsearch",
        "target_name": "snowflake",
        "pipeline_id": "web_events",
    },
    "audit_tolerance_percent": 0.0,
    "claim_order": "oldest_first",
    "windows_per_run": 12,
    "concurrency": 4,
    "ledger_block": "ledgerflow-ledger-database/default",
    "source_block": "ledgerflow-duckdb-source/x",
    "stage_block": "ledgerflow-local-stage/x",
    "target_block": "ledgerflow-duckdb-target/x",
}


@pytest.mark.usefixtures("prefect_harness")
def test_a_document_saved_by_the_previous_code_still_loads() -> None:
    name = f"old-{uuid.uuid4().hex[:8]}"
    _create_document(PipelineConfig, name, PREVIOUS_DOCUMENT)
    config = load_final_config(name)
    # Every field the previous code stored comes back, except `default_record`, which nothing
    # ever stored or read and which is now dropped on load (tests/integration/test_config_block.py).
    kept = {k: v for k, v in PREVIOUS_DOCUMENT.items() if k != "default_record"}
    assert {k: v for k, v in model_dump(config).items() if k in PREVIOUS_DOCUMENT} == kept
    assert "default_record" not in model_dump(config)
    assert set(model_dump(config)) - set(PREVIOUS_DOCUMENT) <= {
        "block_type_slug",
        "_block_document_id",
        "_block_document_name",
        "_is_anonymous",
    }
    assert config._block_document_name == name
    config.save(name, overwrite=True)


@pytest.mark.usefixtures("prefect_harness")
def test_a_saved_document_with_an_unknown_field_fails_when_loaded() -> None:
    name = f"extra-{uuid.uuid4().hex[:8]}"
    _create_document(PipelineConfig, name, {**PREVIOUS_DOCUMENT, "windows_per_rum": 5})
    with pytest.raises(ConfigError) as caught:
        load_final_config(name)
    message = str(caught.value)
    assert f"pipeline config {name!r} is invalid" in message
    assert "'windows_per_rum' is not a field; did you mean 'windows_per_run'?" in message


# --- slots naming a block of the wrong kind -----------------------------------------------------


def test_the_kind_table_matches_what_each_block_implements() -> None:
    for block in ALL_BLOCKS:
        slug = block.get_block_type_slug()
        if block is PipelineConfig:
            assert KIND_OF_TYPE[slug] == "pipeline config"
            continue
        assert kinds_of_class(block) == {KIND_OF_TYPE[slug]}, slug
    assert set(KIND_OF_TYPE) == {b.get_block_type_slug() for b in ALL_BLOCKS} | set(MISSING)


class ProbeSource(Block):
    """A source block of a user's own: it implements ledgerflow.ports.Source."""

    _block_type_slug = "ledgerflow-test-probe-source"
    table: str = "t"

    async def count(self, window: Window) -> int:
        return 0

    async def fingerprint(self, window: Window) -> str | None:
        return None

    async def extract(self, window: Window) -> AsyncIterator[pa.RecordBatch]:
        for batch in ():
            yield batch


@pytest.mark.parametrize(
    ("slot", "slug", "words"),
    [
        (
            "stage_block",
            "ledgerflow-duckdb-source/x",
            "stage_block='ledgerflow-duckdb-source/x' names a source block "
            "(ledgerflow-duckdb-source); stage_block takes a stage block: ledgerflow-local-stage "
            "or ledgerflow-s3-stage, or a block type of yours implementing ledgerflow.ports.Stage",
        ),
        (
            "source_block",
            "ledgerflow-s3-stage/x",
            "names a stage block (ledgerflow-s3-stage); source_block takes a source block: "
            "ledgerflow-duckdb-source or ledgerflow-elasticsearch-source",
        ),
        (
            "target_block",
            "ledgerflow-ledger-database/x",
            "names a ledger block (ledgerflow-ledger-database); target_block takes a target block",
        ),
        (
            "ledger_block",
            "ledgerflow-duckdb-target/x",
            "ledger_block takes a ledger block: ledgerflow-ledger-database",
        ),
        ("target_block", "ledgerflow-pipeline-config/x", "names a pipeline config block"),
        ("stage_block", "secret/x", "names a secret block, which is no ledger, source, stage"),
        (
            "stage_block",
            "ledgerflow-test-probe-source/x",
            "names a source block (ledgerflow-test-probe-source); stage_block takes a stage block",
        ),
    ],
)
def test_a_slot_naming_a_block_of_the_wrong_kind_is_refused(
    slot: str, slug: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config({**BASE, slot: slug}, name="web")
    assert words in str(caught.value)


def test_blocks_of_the_right_kind_and_unknown_types_are_accepted() -> None:
    validate_config({**BASE, "source_block": "ledgerflow-test-probe-source/x"})
    validate_config({**BASE, "source_block": "ledgerflow-elasticsearch-source/x"})
    validate_config({**BASE, "stage_block": "ledgerflow-s3-stage/x"})
    validate_config({**BASE, "target_block": "ledgerflow-snowflake-target/x"})
    # A block type this process has not imported is checked when the flow loads it.
    validate_config({**BASE, "stage_block": "someones-stage/x"})


@pytest.mark.usefixtures("prefect_harness")
def test_blocks_register_refuses_a_stage_block_naming_a_source(tmp_path: Path) -> None:
    code, output = register(
        tmp_path,
        """
[pipeline]
type = "ledgerflow-pipeline-config"
name = "wrong-kind"
pipeline_id = "web_events"
source_block = "ledgerflow-duckdb-source/x"
stage_block = "ledgerflow-duckdb-source/x"
target_block = "ledgerflow-duckdb-target/x"
""",
    )
    assert code == 2
    assert "error: pipeline config [pipeline] is invalid: stage_block=" in output
    assert "names a source block (ledgerflow-duckdb-source)" in output


@pytest.mark.usefixtures("prefect_harness")
def test_a_config_saved_earlier_with_a_wrong_kind_fails_when_the_flow_starts(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(tmp_path, rows=200)
    name = asyncio.run(pipeline.save(end=DEMO_START + timedelta(hours=2)))
    good = load_final_config(name)
    # As the code before this change let it be saved: no kind check.
    wrong = PipelineConfig.construct(**{**model_dump(good), "stage_block": good.source_block})
    wrong.save(name, overwrite=True)
    state = asyncio.run(windowed_pipeline(config_block=name, return_state=True))
    assert state.is_failed()
    assert f"stage_block='{good.source_block}' names a source block" in (state.message or "")
    assert no_windows(pipeline)  # nothing registered, nothing claimed


# --- Elasticsearch hosts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("localhost:9200", "hosts[0]='localhost:9200' has no scheme"),
        ("es.internal", "hosts[0]='es.internal' has no scheme"),
        ("ftp://es:9200", "hosts[0]='ftp://es:9200' has scheme 'ftp'"),
        ("http://es", "hosts[0]='http://es' has no port"),
        ("http://:9200", "has no host"),
        ("http://es:port", "is not a URL"),
    ],
)
def test_an_elasticsearch_host_without_a_usable_scheme_is_refused(host: str, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        model_validate(ElasticsearchSource, {"hosts": [host], "index": "x"})
    message = str(caught.value)
    assert words in message
    assert "allowed: http://host:port or https://host[:port]" in message


def test_elasticsearch_hosts_the_client_accepts_are_accepted() -> None:
    for host in ("http://localhost:9200", "https://es.example.com", "HTTPS://es:443/prefix"):
        model_validate(ElasticsearchSource, {"hosts": [host], "index": "x"})


@pytest.mark.usefixtures("prefect_harness")
def test_an_elasticsearch_block_saved_earlier_without_a_scheme_fails_at_flow_start(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(tmp_path, rows=200)
    name = asyncio.run(pipeline.save(end=DEMO_START + timedelta(hours=2)))
    ElasticsearchSource.construct(hosts=["localhost:9200"], index="events").save(
        name, overwrite=True
    )
    asyncio.run(pipeline.save(source_block=f"ledgerflow-elasticsearch-source/{name}"))
    state = asyncio.run(windowed_pipeline(config_block=name, return_state=True))
    assert state.is_failed()
    message = state.message or ""
    assert f"source_block='ledgerflow-elasticsearch-source/{name}' is invalid" in message
    assert "hosts[0]='localhost:9200' has no scheme" in message
    assert no_windows(pipeline)


# --- client-construction errors are terminal ----------------------------------------------------


def _bad_cloud_id(name: str) -> dict[str, str]:
    model_validate(ElasticsearchSource, {"cloud_id": "not-a-cloud-id", "index": "events"}).save(
        name, overwrite=True
    )
    return {"source_block": f"ledgerflow-elasticsearch-source/{name}"}


def _bad_s3_endpoint(name: str) -> dict[str, str]:
    credentials = AwsCredentials(
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key=SecretStr("x"),
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url="localhost:9000"),
    )
    S3Stage(bucket=S3Bucket(bucket_name="b", credentials=credentials)).save(name, overwrite=True)
    return {"stage_block": f"ledgerflow-s3-stage/{name}"}


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("setup", "words"),
    [
        (_bad_cloud_id, "the Elasticsearch source block's settings cannot build a client"),
        (_bad_s3_endpoint, "the S3 stage block's settings cannot build a client"),
    ],
    ids=["es-cloud-id", "s3-endpoint"],
)
def test_a_client_that_cannot_be_built_fails_the_window_at_once(
    setup: Any, words: str, tmp_path: Path
) -> None:
    pipeline = Pipeline(tmp_path, rows=200)
    name = pipeline.name
    overrides = setup(name)
    # Three retries, no backoff: a retried error would show as four runs of the task.
    asyncio.run(
        pipeline.save(
            end=DEMO_START + timedelta(hours=2),
            max_retry_task=3,
            retry_backoff_seconds=0,
            **overrides,
        )
    )
    state = asyncio.run(windowed_pipeline(config_block=name, return_state=True))
    assert state.is_failed()
    [record] = asyncio.run(pipeline.records())
    assert record.pipeline_status == Status.FAILED
    assert words in (record.error_message or ""), record.error_message
    assert "fix the block and save it again" in (record.error_message or "")

    async def run_counts() -> dict[str, int]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
                )
            )
        return {r.name: r.run_count for r in runs}

    counts = asyncio.run(run_counts())
    assert counts and all(n == 1 for n in counts.values()), counts


def test_snowflake_connect_args_that_cannot_build_a_client_are_terminal(tmp_path: Path) -> None:
    from ledgerflow.errors import ClientSettingsError, is_retryable

    target = SnowflakeTarget(
        connector=SnowflakeConnector(
            credentials=SnowflakeCredentials(account="acme", user="u", password=SecretStr("p")),
            database="D",
            warehouse="W",
            schema="PUBLIC",
        ),
        table="T",
        stage="S",
        stage_url="s3://b/lf/",
        connect_args={"session_parameters": "not-a-mapping"},
    )
    window = window_containing(DEMO_START, "UTC", "2h")
    with pytest.raises(ClientSettingsError) as caught:
        asyncio.run(target.count(window, "p"))
    assert "the Snowflake target block's settings cannot build a client" in str(caught.value)
    assert not is_retryable(caught.value)


# --- a missing block ----------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_a_missing_block_lists_the_saved_blocks_of_its_type(tmp_path: Path) -> None:
    saved = f"there-{uuid.uuid4().hex[:8]}"
    model_validate(LocalStage, {"root": str(tmp_path)}).save(saved, overwrite=True)
    with pytest.raises(ConfigError) as caught:
        asyncio.run(load_block("ledgerflow-local-stage/nowhere", "stage_block", Stage))
    message = str(caught.value)
    assert "stage_block='ledgerflow-local-stage/nowhere' names no saved block" in message
    assert "saved ledgerflow-local-stage blocks: " in message and saved in message
    assert "demo" not in message
    with pytest.raises(ConfigError) as caught:
        asyncio.run(load_block("ledgerflow-test-probe-source/nowhere", "source_block", Source))
    assert "no ledgerflow-test-probe-source block is saved on this Prefect API" in str(caught.value)


@pytest.mark.usefixtures("prefect_harness")
def test_a_block_type_imported_only_at_load_is_checked_for_its_kind_then() -> None:

    slug = f"ledgerflow-test-late-{uuid.uuid4().hex[:6]}"
    # The config is built before the type's class is imported anywhere: it cannot judge it.
    validate_config({**BASE, "stage_block": f"{slug}/x"})

    class LateSource(ProbeSource):
        _block_type_slug = slug

    LateSource().save("x", overwrite=True)
    with pytest.raises(ConfigError) as caught:
        asyncio.run(load_block(f"{slug}/x", "stage_block", Stage))
    assert f"stage_block='{slug}/x' names a source block ({slug})" in str(caught.value)
