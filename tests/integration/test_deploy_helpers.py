"""Blocks from a TOML file with secrets from the environment; prefect.yaml is well formed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from ledgerflow.blocks.config import load_final_config
from ledgerflow.blocks.ledger_db import LedgerDatabase
from ledgerflow.deployments.register import build_blocks, register_file
from ledgerflow.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
FILE = """
[ledger]
type = "ledgerflow-ledger-database"
name = "from-file"
url = "postgresql+asyncpg://etl:${LEDGER_PASSWORD}@db.internal:5432/etl"

[pipeline]
type = "ledgerflow-pipeline-config"
name = "from-file"
pipeline_id = "web_events"
granularity = "30m"
ledger_block = "ledgerflow-ledger-database/from-file"
source_block = "ledgerflow-duckdb-source/x"
stage_block = "ledgerflow-local-stage/x"
target_block = "ledgerflow-duckdb-target/x"
"""


@pytest.mark.usefixtures("prefect_harness")
def test_blocks_register_from_a_file_with_secrets_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "blocks.toml"
    path.write_text(FILE)
    saved = asyncio.run(register_file(path, env={"LEDGER_PASSWORD": "s3cr3t-pw"}))
    assert saved == ["ledgerflow-ledger-database/from-file", "ledgerflow-pipeline-config/from-file"]
    config = load_final_config("from-file")
    assert config.granularity == "30m"
    ledger = LedgerDatabase.load("from-file")
    assert "s3cr3t-pw" in ledger.url.get_secret_value()
    assert "s3cr3t-pw" not in ledger.display_url() and "s3cr3t-pw" not in repr(ledger)


def test_a_missing_variable_or_a_bad_field_saves_nothing() -> None:
    import tomllib

    document = tomllib.loads(FILE)
    with pytest.raises(ConfigError, match="needs environment variable LEDGER_PASSWORD"):
        build_blocks(document, env={})
    document["pipeline"]["granularity"] = "7h"
    with pytest.raises(ConfigError, match="does not divide a day"):
        build_blocks(document, env={"LEDGER_PASSWORD": "x"})
    with pytest.raises(ConfigError, match="type='nope' is unknown"):
        build_blocks({"x": {"type": "nope", "name": "n"}}, env={})


def test_prefect_yaml_declares_the_scheduled_and_backfill_deployments() -> None:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"scheduled", "backfill"}
    scheduled = deployments["scheduled"]
    assert scheduled["schedules"] == [{"cron": "0 */2 * * *", "timezone": "America/Los_Angeles"}]
    assert "schedules" not in deployments["backfill"]
    for d in deployments.values():
        path, _, name = d["entrypoint"].partition(":")
        assert (ROOT / path).is_file() and name == "windowed_pipeline"
        assert d["work_pool"]["name"] == "ledgerflow-process"
