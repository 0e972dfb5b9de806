"""The CLI as a user starts it: a new process on a Prefect home where ledgerflow never saved a
block (so the server knows no ledgerflow block type), and read-only commands that start without
importing every block ledgerflow knows or every installed Prefect collection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
# Generous: each command imports Prefect and migrates a fresh SQLite database on a busy machine.
TIMEOUT = 600


def cli(home: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(home),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    program = code or "from ledgerflow.cli import app; app()"
    return subprocess.run(
        [sys.executable, "-c", program, *args],
        cwd=home.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_a_prefect_that_never_saw_a_ledgerflow_block_gets_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    home = tmp_path / "prefect-home"
    # Read-only commands register no block type: the PipelineConfig type is unknown to the API,
    # which answers 404 "Block type not found" when asked for its documents. The first command
    # also migrates the fresh home: nothing of that reaches the terminal either.
    for args in (["status"], ["windows", "-s", "FAILED"], ["status", "-c", "nosuch"]):
        done = cli(home, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        [line] = done.stderr.strip().splitlines()
        assert "no PipelineConfig block is saved yet" in line, (args, line)
        assert ("no pipeline config block named 'nosuch'" in line) == ("nosuch" in args)
        assert "Traceback" not in done.stdout + done.stderr


def test_read_only_commands_start_without_the_block_catalog_or_prefect_collections(
    tmp_path: Path,
) -> None:
    """Where a read-only command's start went (measured with `python -X importtime`): the AWS,
    Elasticsearch and Snowflake clients behind the catalog, and the installed Prefect
    collections that Block.load and block auto-registration import. None of it is needed to
    read a ledger, and none of it is imported, whether the config loads or not."""
    home = tmp_path / "prefect-home"
    blocks = tmp_path / "blocks.toml"
    blocks.write_text(
        f'[ledger]\ntype = "ledgerflow-ledger-database"\nname = "quick"\n'
        f'url = "sqlite+aiosqlite:///{tmp_path / "ledger.db"}"\n'
        '[pipeline]\ntype = "ledgerflow-pipeline-config"\nname = "quick"\n'
        'pipeline_id = "quick"\nledger_block = "ledgerflow-ledger-database/quick"\n'
        'source_block = "ledgerflow-duckdb-source/quick"\n'
        'stage_block = "ledgerflow-local-stage/quick"\n'
        'target_block = "ledgerflow-duckdb-target/quick"\n'
    )
    for args in (["blocks", "register", "--file", str(blocks)], ["init", "-c", "quick"]):
        done = cli(home, *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    probe = (
        "import sys\n"
        "from ledgerflow.cli import app\n"
        "try:\n"
        "    app()\n"
        "finally:\n"
        # The Snowflake client is `snowflake.connector`. Not the `snowflake` namespace: Prefect
        # 3's prefect-snowflake requires the `snowflake` package (snowflake-core), whose .pth file
        # imports `snowflake._legacy` into that namespace when any Python of the venv starts.
        "    heavy = ['ledgerflow.blocks.catalog', 'boto3', 'elasticsearch',\n"
        "             'snowflake.connector', 'prefect_aws', 'prefect_email', 'prefect_snowflake',\n"
        "             'ledgerflow.flows.pipeline']\n"
        "    print('IMPORTED', [m for m in heavy if m in sys.modules], file=sys.stderr)\n"
    )
    for args, code in [
        (["status", "-c", "quick"], 0),
        (["windows", "-c", "quick", "-s", "FAILED"], 0),
        (["status", "-c", "nosuch"], 2),
    ]:
        done = cli(home, *args, code=probe)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert done.stderr.strip().splitlines()[-1] == "IMPORTED []", (args, done.stderr)
    assert "quick  PENDING: 0" in cli(home, "status", "-c", "quick").stdout
