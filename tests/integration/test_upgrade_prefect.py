"""Upgrade from Prefect 2 to Prefect 3 for real, as the README's upgrade section says.

A Prefect 2.20 server and process worker load part of a pipeline's windows (Postgres ledger,
DuckDB target), a second Prefect 2 worker is killed with SIGKILL in the middle of a load, the
server stops; then Prefect 3's server starts on the same server database (it migrates it in
place), the README's steps run, and Prefect 3 process workers load the rest, the dead worker's
window included once its lease goes stale. Every window must end COMPLETED, once, with no gap,
and the target must hold each source row once.

It needs both Prefect installs: LEDGERFLOW_PREFECT2_BIN and LEDGERFLOW_PREFECT3_BIN name the bin
folders of their virtualenvs (each with `prefect`, `ledgerflow` and `python`; `make
test-upgrade` sets them). pytest itself may run from either.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from ledgerflow.demo import DEMO_START

from tests.pgkit import asyncpg_url, create_database, drop_database

from .kit import Pipeline
from .test_deploy_helpers import readme_block
from .test_deploy_server import Server, readme_project, wait_for_runs, walk

pytestmark = pytest.mark.slow
BINS = {2: "LEDGERFLOW_PREFECT2_BIN", 3: "LEDGERFLOW_PREFECT3_BIN"}
END = DEMO_START + timedelta(days=1)  # twelve 2-hour windows
STALE_HOURS = 0.02  # 72 s: the killed worker's lease expires during the test
# Appended to the [pipeline] table of BLOCKS_TOML (the last one): a short lease, no task retry
# waits longer than it, and one window at a time per run (two runs still race).
CANCELLING_TIMEOUT = "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_CANCELLING_TIMEOUT_SECONDS"
# Production blocks saved under Prefect 2 (nested blocks, secrets) and loaded under Prefect 3.
SECRETS = {
    "LF_AWS_SECRET": "LF-aws-Upgrade-31c9",
    "LF_SNOWFLAKE_PASSWORD": "LF-sf-Upgrade-77ad",
    "LF_ES_KEY": "LF-es-Upgrade-0e52",
}
PRODUCTION_TOML = """
[stage]
type = "ledgerflow-s3-stage"
name = "prod"

[stage.bucket]
bucket_name = "etl-stage"

[stage.bucket.credentials]
aws_access_key_id = "AKIDUPGRADE"
aws_secret_access_key = "${LF_AWS_SECRET}"
region_name = "us-east-1"

[target]
type = "ledgerflow-snowflake-target"
name = "prod"
table = "WEB_EVENTS"
stage = "LEDGERFLOW_STAGE"
stage_url = "s3://etl-stage/ledgerflow/"

[target.connector]
database = "ETL"
warehouse = "LOAD_WH"
schema = "PUBLIC"

[target.connector.credentials]
account = "acct"
user = "etl"
password = "${LF_SNOWFLAKE_PASSWORD}"

[source]
type = "ledgerflow-elasticsearch-source"
name = "prod"
hosts = ["http://127.0.0.1:9200"]
index = "events"
api_key = "${LF_ES_KEY}"
"""
LOAD_PRODUCTION = """
import os
from ledgerflow.blocks.elasticsearch import ElasticsearchSource
from ledgerflow.blocks.s3_stage import S3Stage
from ledgerflow.blocks.snowflake_target import SnowflakeTarget

stage, target = S3Stage.load("prod"), SnowflakeTarget.load("prod")
source = ElasticsearchSource.load("prod")
assert stage.bucket.credentials.aws_access_key_id == "AKIDUPGRADE", stage.bucket.bucket_name
assert (target.connector.database, target.connector.schema_) == ("ETL", "PUBLIC")
found = {
    "LF_AWS_SECRET": stage.bucket.credentials.aws_secret_access_key,
    "LF_SNOWFLAKE_PASSWORD": target.connector.credentials.password,
    "LF_ES_KEY": source.api_key,
}
wrong = [k for k, v in found.items() if v.get_secret_value() != os.environ[k]]  # never printed
assert not wrong, f"these secrets did not survive: {wrong}"
print("loaded")
"""
PIPELINE_EXTRA = f"stale_threshold_hours = {STALE_HOURS}\nmax_retry_task = 1\nconcurrency = 1\n"


@pytest.fixture
def bins() -> dict[int, Path]:
    """Both installs' bin folders, checked: skip when neither is named, fail when one is wrong.
    (First among the test's fixtures: a skip creates no database.)"""
    named = {major: os.environ.get(var, "") for major, var in BINS.items()}
    if not any(named.values()):
        pytest.skip(
            f"needs a Prefect 2 and a Prefect 3 install: set {BINS[2]} and {BINS[3]} to their "
            "virtualenvs' bin folders (`make test PREFECT=3` does)"
        )
    bins = {}
    for major, value in named.items():
        assert value, f"{BINS[major]} is not set (the other one is)"
        path = Path(value)
        missing = [n for n in ("prefect", "ledgerflow", "python") if not (path / n).is_file()]
        assert not missing, f"{BINS[major]}={value} has no {', '.join(missing)}"
        found = subprocess.run(
            [str(path / "python"), "-c", "import prefect; print(prefect.__version__)"],
            capture_output=True,
            text=True,
            timeout=300,  # importing Prefect on a busy machine
            check=True,
        ).stdout.strip()
        assert found.split(".")[0] == str(major), f"{BINS[major]}={value} has Prefect {found}"
        bins[major] = path
    return bins


@pytest.fixture(params=["sqlite", "postgres"])
async def server_database(
    request: pytest.FixtureRequest, pg_admin_dsn: str
) -> AsyncIterator[dict[str, str]]:
    """The Prefect server's database: the default SQLite file in PREFECT_HOME, or Postgres."""
    if request.param == "sqlite":
        yield {}
        return
    name = await create_database(pg_admin_dsn, prefix="lf_prefect")
    yield {"PREFECT_API_DATABASE_CONNECTION_URL": asyncpg_url(pg_admin_dsn, name)}
    await drop_database(pg_admin_dsn, name)


def frozen(group: int) -> bool:
    """Whether a process of the process group `group` is stopped (a worker's flow run at a
    `:stop` failpoint)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # it exited meanwhile
        if fields[0] == "T" and int(fields[2]) == group:
            return True
    return False


def new_run(server: Server, deployment_id: str) -> str:
    return str(server.api_post(f"/deployments/{deployment_id}/create_flow_run", {})["id"])


def test_upgrade_from_prefect_2_to_prefect_3_loads_every_window_once(
    bins: dict[int, Path], tmp_path: Path, pg_url: str, server_database: dict[str, str]
) -> None:
    started = time.monotonic()
    home = tmp_path / "prefect-home"
    pipeline = Pipeline(tmp_path / "data", rows=3000, ledger_url=pg_url)
    pipeline.name = "web_events"  # the pipeline_id of blocks.toml, whose ledger records() reads
    project = readme_project(tmp_path, pipeline, END, PIPELINE_EXTRA)
    (project / "prod.toml").write_text(PRODUCTION_TOML)

    # Prefect 2: the README's deploy section, as written; its run loads 4 of the 12 windows.
    old = Server(home, bins[2], server_database, label="p2-")
    try:
        (first_run,) = walk(old, readme_block("## Deploy", "bash", 0), project)
        wait_for_runs(old, [first_run])
        old.env.update(SECRETS)
        saved = old.command(["ledgerflow", "blocks", "register", "--file", "prod.toml"], project)
        assert saved.returncode == 0, f"{saved.stdout}\n{saved.stderr}"
        old.run("work-pool", "create", "ledgerflow-agent", "--type", "prefect-agent")
        for proc in old.procs[1:]:  # the README's worker stops; the server keeps running
            os.killpg(proc.pid, signal.SIGTERM)
            Server.reap(proc, grace=60)
        (deployment,) = old.api_post("/deployments/filter", {})

        # A worker whose flow run freezes inside the target's transaction, then dies with it.
        old.env["LEDGERFLOW_FAILPOINT"] = "mid_load:stop"
        doomed = old.spawn("worker", "start", "--pool", "ledgerflow-process")
        del old.env["LEDGERFLOW_FAILPOINT"]
        killed_run = new_run(old, deployment["id"])
        deadline = time.monotonic() + 600  # a flow run process starts slowly on a busy machine
        while not frozen(doomed.pid):
            assert time.monotonic() < deadline, f"no flow run froze\n{old.log_tails()}"
            time.sleep(1)
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
    finally:
        old.stop()
    before = asyncio.run(pipeline.records())
    assert [r.pipeline_status for r in before].count("COMPLETED") == 4
    (stuck,) = [r for r in before if r.pipeline_status == "IN_PROGRESS"]
    assert stuck.dag_run_id == killed_run

    # Prefect 3 on the same server database: the README's upgrade section, as written.
    steps = readme_block("## Upgrade from Prefect 2 to Prefect 3", "bash", 0).splitlines()
    assert steps[0].split("#")[0].split() == ["prefect", "server", "start"]
    # That command, on a free port. A run left CANCELLING is marked Cancelled after 30 s, not 5 min.
    env = {**server_database, CANCELLING_TIMEOUT: "30"}
    new = Server(home, bins[3], env, label="p3-")
    try:
        walk(new, "\n".join(steps[1:]), project)
        new.env.update(SECRETS)
        assert new.python(LOAD_PRODUCTION).strip() == "loaded"
        assert new.api_get(f"/flow_runs/{first_run}")["state_type"] == "COMPLETED"
        (moved,) = new.api_post("/deployments/filter", {})
        assert moved["id"] == deployment["id"] and moved["work_pool_name"] == "ledgerflow-process"
        refused = new.command(
            ["ledgerflow", "deploy", "-c", "web-events", "--pool", "ledgerflow-agent"], project
        )
        assert refused.returncode == 2 and "has no agents to run it" in refused.stderr, refused
        new.spawn("worker", "start", "--pool", "ledgerflow-process")  # a second, racing

        # The dead worker's flow run still says Running: cancelling it ends it (no worker runs
        # it, so the server marks it Cancelled once it has been CANCELLING for the timeout).
        assert new.api_get(f"/flow_runs/{killed_run}")["state_type"] == "RUNNING"
        new.run("flow-run", "cancel", killed_run)
        runs = finish(new, deployment["id"], pipeline)
        deadline = time.monotonic() + 600
        while new.api_get(f"/flow_runs/{killed_run}")["state_type"] != "CANCELLED":
            assert time.monotonic() < deadline, new.api_get(f"/flow_runs/{killed_run}")["state"]
            time.sleep(2)
    finally:
        new.stop()

    records = asyncio.run(pipeline.records())
    assert [r.pipeline_status for r in records] == ["COMPLETED"] * 12
    spans = [(r.window_start_time, r.window_end_time) for r in records]
    assert spans[0][0] == DEMO_START and spans[-1][1] == END
    assert all(end == start for (_, end), (start, _) in pairwise(spans)), "a gap or an overlap"
    assert len({r.window_start_time for r in records}) == 12
    by_run = [r.dag_run_id for r in records]
    assert by_run.count(first_run) == 4 and all(run in runs for run in by_run if run != first_run)
    (recovered,) = [r for r in records if r.id == stuck.id]
    assert recovered.dag_run_id in runs and recovered.retry_attempt == 1  # released once
    expected = pipeline._scalar_row(
        pipeline.source_path,
        "SELECT count(*) FROM web_events WHERE ts >= ? AND ts < ?",
        [DEMO_START, END],
    )[0]
    assert pipeline.warehouse_rows() == (expected, expected)
    assert sum(r.target_count or 0 for r in records) == expected
    print(f"upgrade test took {time.monotonic() - started:.0f} s")


def finish(server: Server, deployment_id: str, pipeline: Pipeline) -> list[str]:
    """Two racing runs at a time until every window is COMPLETED; the Prefect 3 runs made."""
    runs: list[str] = []
    for _ in range(4):
        batch = [new_run(server, deployment_id) for _ in range(2)]
        wait_for_runs(server, batch)
        runs += batch
        records = asyncio.run(pipeline.records())
        if all(r.pipeline_status == "COMPLETED" for r in records):
            return runs
        statuses = {r.pipeline_status for r in records}
        assert statuses <= {"COMPLETED", "PENDING", "IN_PROGRESS"}, statuses
        if "PENDING" not in statuses:
            # Only the dead worker's window is left, its lease not yet stale: wait it out (the
            # next run's cleanup releases it, the one after loads it).
            (stuck,) = [r for r in records if r.pipeline_status == "IN_PROGRESS"]
            assert stuck.pipeline_locked_at is not None
            stale_at = stuck.pipeline_locked_at + timedelta(hours=STALE_HOURS, seconds=5)
            time.sleep(max(0.0, (stale_at - datetime.now(UTC)).total_seconds()))
    raise AssertionError(f"windows left after {len(runs)} runs: {records}")
