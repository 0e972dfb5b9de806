"""Blocks from a TOML file with secrets from the environment; prefect.yaml is safe to deploy;
the README's block snippet, block errors and block documentation say what a user needs."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ledgerflow.blocks.config import load_final_config
from ledgerflow.blocks.ledger_db import LedgerDatabase
from ledgerflow.cli import app
from ledgerflow.compat import HAS_AGENTS
from ledgerflow.deployments.save_blocks import build_blocks, register_file
from ledgerflow.errors import ConfigError
from typer.testing import CliRunner

from .kit import Pipeline

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


def test_prefect_yaml_schedules_nothing_and_names_no_config() -> None:
    # `prefect deploy --all` must not start runs for a config nobody made: no schedule, and no
    # config_block default (each run names its config; the schema enforcement refuses one without).
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"on-demand", "backfill"}
    for d in deployments.values():
        assert not d.get("schedules") and "schedule" not in d
        assert "config_block" not in (d.get("parameters") or {})
        assert d["enforce_parameter_schema"] is True
        path, _, name = d["entrypoint"].partition(":")
        assert (ROOT / path).is_file() and name == "windowed_pipeline"
        assert d["work_pool"]["name"] == "ledgerflow-process"
    assert deployments["backfill"]["parameters"] == {"max_windows": 500}
    assert "ledgerflow deploy" in (ROOT / "prefect.yaml").read_text()


def test_block_file_errors_keep_the_section_name_in_brackets(tmp_path: Path) -> None:
    # rich would read "[ledger]" as markup and print "error:  type=... is unknown".
    path = tmp_path / "blocks.toml"
    path.write_text('[ledger]\ntype = "ledger-database"\nname = "prod"\n')
    result = CliRunner().invoke(app, ["blocks", "register", "--file", str(path)])
    assert result.exit_code == 2
    assert "error: [ledger] type='ledger-database' is unknown; allowed: [" in result.output
    assert "'ledgerflow-ledger-database'" in result.output


def readme_block(heading: str, language: str, index: int = 0) -> str:
    """The index-th fenced `language` block under the README heading `heading`."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(f"\n{heading}\n") :]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    blocks = re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)
    return str(blocks[index])


@pytest.mark.usefixtures("prefect_harness")
def test_the_readme_block_snippet_runs_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snippet = readme_block("## Configure the blocks", "python")
    assert "overwrite=True" in snippet
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # the second run replaces the blocks instead of raising
        exec(compile(snippet, "README.md", "exec"), {})
    assert load_final_config("web-events").ledger_block == "ledgerflow-ledger-database/prod"


@pytest.mark.usefixtures("prefect_harness")
def test_a_missing_block_says_how_to_save_it() -> None:
    from ledgerflow.ports import Stage
    from ledgerflow.wiring import load_block

    with pytest.raises(ConfigError) as caught:
        asyncio.run(load_block("ledgerflow-s3-stage/nowhere", "stage_block", Stage))
    message = str(caught.value)
    assert "stage_block='ledgerflow-s3-stage/nowhere' names no saved block" in message
    assert "ledgerflow blocks register --file" in message and ".save(name)" in message
    assert "ledgerflow demo" not in message


@pytest.mark.usefixtures("prefect_harness")
def test_deploy_refuses_the_temporary_local_api() -> None:
    # Without PREFECT_API_URL the deployment would land in a database no worker reads. (Prefect
    # 3's harness is a server process that sets PREFECT_API_URL itself: unset it here.)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert not PREFECT_API_URL.value()
        result = CliRunner().invoke(app, ["deploy", "-c", "web-events"])
    assert result.exit_code == 2
    assert "PREFECT_API_URL is not set" in result.output
    assert "prefect config set PREFECT_API_URL=" in result.output


@pytest.mark.usefixtures("prefect_harness")
def test_init_registers_every_block_type() -> None:
    from ledgerflow.blocks.catalog import ALL_BLOCKS
    from prefect.client.orchestration import get_client

    result = CliRunner().invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    assert f"registered {len(ALL_BLOCKS)} block types" in result.output

    async def types() -> set[str]:
        async with get_client() as client:
            return {t.slug for t in await client.read_block_types()}

    assert {b.get_block_type_slug() for b in ALL_BLOCKS} <= asyncio.run(types())


def test_every_field_says_what_it_does() -> None:
    from ledgerflow.blocks.catalog import ALL_BLOCKS
    from ledgerflow.compat import PREFECT_3

    for block in ALL_BLOCKS:
        assert block._documentation_url is None  # no placeholder: the README documents them
        # pydantic v2 (Prefect 3) keeps each field's FieldInfo in model_fields; v1 in __fields__.
        infos = (
            block.model_fields
            if PREFECT_3
            else {name: f.field_info for name, f in block.__fields__.items()}
        )
        assert infos
        for name, info in infos.items():
            assert info.title and info.description, f"{block.__name__}.{name}"
            assert "seed" not in info.description, f"{block.__name__}.{name}: {info.description}"


def test_the_pool_option_offers_an_agent_pool_only_where_agents_exist() -> None:
    import typer
    from ledgerflow.compat import HAS_AGENTS

    deploy = typer.main.get_command(app).commands["deploy"]  # type: ignore[attr-defined]
    (pool,) = [p for p in deploy.params if p.name == "pool"]
    if HAS_AGENTS:
        assert pool.help == "Work pool (type process, or prefect-agent for an agent)"
    else:
        assert (
            pool.help
            == "Work pool (type process; Prefect 3 has no agents, so no prefect-agent pool)"
        )


@pytest.mark.skipif(
    HAS_AGENTS, reason="Prefect 2 runs agent pools (test_deploy_server deploys to one)"
)
@pytest.mark.usefixtures("prefect_harness")
def test_deploy_refuses_an_agent_pool_on_prefect_3(tmp_path: Path) -> None:
    # A Prefect 2 agent pool survives the server's upgrade, and nothing on Prefect 3 runs it.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pipeline = Pipeline(tmp_path, rows=10)

    async def setup() -> None:
        await pipeline.save()
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name="old-agents", type="prefect-agent"))

    asyncio.run(setup())
    result = CliRunner().invoke(app, ["deploy", "-c", pipeline.name, "--pool", "old-agents"])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "work pool 'old-agents'" in output and "is an agent pool (type prefect-agent)" in output
    assert "has no agents to run it" in output
    assert f"ledgerflow deploy -c {pipeline.name} --pool ledgerflow-process" in output

    async def deployments() -> list[Any]:
        async with get_client() as client:
            return list(await client.read_deployments())

    assert asyncio.run(deployments()) == []
