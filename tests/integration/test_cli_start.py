"""The CLI as a user starts it: a new process on a Prefect home where ledgerflow never saved a
block (so the server knows no ledgerflow block type), and read-only commands that start without
importing every block ledgerflow knows or every installed Prefect collection."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from ledgerflow.compat import PREFECT_3

from .cli_kit import COUNT_MIGRATIONS, cli
from .warehouse_kit import KEY, REGION, SECRET, Peers

pytestmark = pytest.mark.slow


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
        assert imported(done.stderr) == "IMPORTED []", (args, done.stderr)
    assert "quick  PENDING: 0" in cli(home, "status", "-c", "quick").stdout


# Not `snowflake`: a .pth file of the snowflake-legacy package imports that namespace at every
# interpreter start (Prefect 3's venv); the connector is what is heavy.
HEAVY_CLIENTS = [
    "prefect_aws",
    "prefect_email",
    "prefect_snowflake",
    "boto3",
    "snowflake.connector",
]
IMPORTED_PROBE = (
    "import atexit, gc, sys\n"
    # Registered first, so it runs last of the exit handlers, as the interpreter's shutdown is
    # about to begin: whatever is still alive should be frozen, out of that shutdown's sight.
    "atexit.register(lambda: print('FROZEN', gc.get_freeze_count() > 0, file=sys.stderr))\n"
    + COUNT_MIGRATIONS
    + "import os\n"
    "from ledgerflow.cli import app\n"
    "try:\n"
    "    app()\n"
    "finally:\n"
    f"    heavy = {HEAVY_CLIENTS!r}\n"
    "    print('IMPORTED', [m for m in heavy if m in sys.modules], file=sys.stderr)\n"
    "    print('INHERITED', os.environ.get('PREFECT_API_DATABASE_MIGRATE_ON_START'),\n"
    "          file=sys.stderr)\n"
)


def imported(stderr: str) -> str:
    """The probe's IMPORTED line (Prefect 3 logs its temporary server's stop after it)."""
    return next(line for line in reversed(stderr.splitlines()) if line.startswith("IMPORTED"))


def embedded_blocks(tmp_path: Path, name: str) -> Path:
    """A blocks file for one 2-hour window of demo events on the embedded blocks."""
    from ledgerflow.demo import generate_events

    generate_events(tmp_path / "source.duckdb", rows=500)
    blocks = tmp_path / "blocks.toml"
    blocks.write_text(
        f'[ledger]\ntype = "ledgerflow-ledger-database"\nname = "{name}"\n'
        f'url = "sqlite+aiosqlite:///{tmp_path / "ledger.db"}"\n'
        f'[source]\ntype = "ledgerflow-duckdb-source"\nname = "{name}"\n'
        f'path = "{tmp_path / "source.duckdb"}"\ntable = "web_events"\n'
        f'[stage]\ntype = "ledgerflow-local-stage"\nname = "{name}"\n'
        f'root = "{tmp_path / "stage"}"\n'
        f'[target]\ntype = "ledgerflow-duckdb-target"\nname = "{name}"\n'
        f'path = "{tmp_path / "warehouse.duckdb"}"\ntable = "web_events"\n'
        f'[pipeline]\ntype = "ledgerflow-pipeline-config"\nname = "{name}"\n'
        f'pipeline_id = "{name}"\ntimezone = "America/Los_Angeles"\ngranularity = "2h"\n'
        "start = 2025-03-08T00:00:00-08:00\nend = 2025-03-08T02:00:00-08:00\n"
        f'ledger_block = "ledgerflow-ledger-database/{name}"\n'
        f'source_block = "ledgerflow-duckdb-source/{name}"\n'
        f'stage_block = "ledgerflow-local-stage/{name}"\n'
        f'target_block = "ledgerflow-duckdb-target/{name}"\n'
    )
    return blocks


def test_a_run_on_the_embedded_blocks_imports_no_collection_or_cloud_client(
    tmp_path: Path,
) -> None:
    """Prefect's API start imported every installed Prefect collection (prefect-aws,
    prefect-snowflake, prefect-email, with boto3 and the Snowflake connector) to re-register
    every block type, several times per run. A run on a fresh home whose blocks are all
    embedded imports none of them, registers nothing at start, and loads its window."""
    home = tmp_path / "prefect-home"
    done = cli(home, "blocks", "register", "--file", str(embedded_blocks(tmp_path, "quick")))
    assert done.returncode == 0, (done.stdout, done.stderr)
    done = cli(home, "run", "-c", "quick", code=IMPORTED_PROBE)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "COMPLETED: 1 window(s): 1 completed" in done.stdout, done.stdout
    assert imported(done.stderr) == "IMPORTED []", done.stderr
    # The interpreter's shutdown walked Prefect's whole heap several times over, about a second
    # after the run had printed its result (ledgerflow.gctune.quick_shutdown).
    assert "FROZEN True" in done.stderr.splitlines(), done.stderr
    # Nothing remembered a registration: Prefect's start did none.
    assert not (home / "memo_store.toml").exists()
    # Prefect 2 started its in-process API ten times in that run, each start migrating the
    # database again (Alembic reading every migration script): now once, under the home's lock.
    # Prefect 3's API is a server process of its own, which migrates at its start.
    lines = done.stderr.splitlines()
    assert lines.count("MIGRATED") == (0 if PREFECT_3 else 1), done.stderr
    # What this process starts (a flow run's process, a server) still migrates at its starts.
    assert "INHERITED None" in lines, done.stderr


def test_a_run_on_s3_and_snowflake_blocks_works_on_a_fresh_prefect_home(
    tmp_path: Path, peers: Peers
) -> None:
    """No block type is registered when Prefect's API starts: saving the S3 stage and the
    Snowflake target registers their types and those of the prefect-aws and prefect-snowflake
    blocks inside them, and a run in a new process loads them all."""
    home = tmp_path / "prefect-home"
    name = "cloud"
    blocks = embedded_blocks(tmp_path, name)
    bucket, database = peers.new_bucket(), "LF_STARTUP"
    with contextlib.closing(peers.sql_connection(database)) as conn:
        conn.cursor().execute(f"CREATE STAGE LF_STAGE URL='s3://{bucket}/ledgerflow/'")
        conn.cursor().execute(
            "CREATE TABLE EVENTS (EVENT_ID VARCHAR, TS TIMESTAMP_TZ, USER_ID VARCHAR, "
            "WINDOW_START TIMESTAMP_TZ, LOADED_AT TIMESTAMP_TZ)"
        )
    sf = peers.snowflake
    text = blocks.read_text().replace(
        f'"ledgerflow-local-stage/{name}"', f'"ledgerflow-s3-stage/{name}"'
    )
    text = text.replace(
        f'"ledgerflow-duckdb-target/{name}"', f'"ledgerflow-snowflake-target/{name}"'
    )
    text += (
        f'[s3]\ntype = "ledgerflow-s3-stage"\nname = "{name}"\n'
        f'[s3.bucket]\nbucket_name = "{bucket}"\n'
        f'[s3.bucket.credentials]\naws_access_key_id = "{KEY}"\n'
        f'aws_secret_access_key = "{SECRET}"\nregion_name = "{REGION}"\n'
        f'[s3.bucket.credentials.aws_client_parameters]\nendpoint_url = "{peers.s3_endpoint}"\n'
        f'[snowflake]\ntype = "ledgerflow-snowflake-target"\nname = "{name}"\n'
        f'table = "EVENTS"\nstage = "LF_STAGE"\nstage_url = "s3://{bucket}/ledgerflow/"\n'
        'load_columns = ["EVENT_ID", "TS", "USER_ID"]\njson_columns = []\n'
        f'[snowflake.connector]\ndatabase = "{database}"\nwarehouse = "LEDGERFLOW_WH"\n'
        'schema = "PUBLIC"\n'
        f'[snowflake.connector.credentials]\naccount = "{sf["account"]}"\n'
        f'user = "{sf["user"]}"\npassword = "{sf["password"]}"\n'
        f'[snowflake.connect_args]\nhost = "{sf["host"]}"\nport = {sf["port"]}\n'
        f'protocol = "{sf["protocol"]}"\nnetwork_timeout = 30\n'
        "[snowflake.connect_args.session_parameters]\n"
        "CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED = false\n"
    )
    blocks.write_text(text)
    done = cli(home, "blocks", "register", "--file", str(blocks))
    assert done.returncode == 0, (done.stdout, done.stderr)
    done = cli(home, "run", "-c", name)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "COMPLETED: 1 window(s): 1 completed" in done.stdout, done.stdout
    with contextlib.closing(peers.sql_connection(database)) as conn:
        [(rows,)] = conn.cursor().execute("SELECT count(*) FROM EVENTS").fetchall()
    assert rows > 0
