"""Deploy for real: `prefect server start` on loopback; the README's deploy section walked line by
line (blocks saved to that server, `ledgerflow deploy`, a process worker, then, on Prefect 2 only,
an agent);
`prefect deploy` from prefect.yaml with racing process workers. Runs complete against the embedded
blocks. Everything started here is stopped here.

Timeouts are generous on purpose: the machine has two cores shared with other test runs, and a
Prefect server, a worker and each flow-run process each take many seconds to start there."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ledgerflow.compat import HAS_AGENTS
from ledgerflow.demo import DEMO_START

from tests.netkit import free_port

from .kit import Pipeline
from .test_deploy_helpers import readme_block

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


class Server:
    """`prefect server start` with PREFECT_HOME `home`, and the commands that talk to it.

    `bin` holds the `prefect`, `ledgerflow` and `python` of the Prefect install to run (default:
    this interpreter's); `env` adds settings (e.g. the server's database URL). Two servers on one
    home in turn (an upgrade) keep their process logs apart by `label`."""

    def __init__(
        self, home: Path, bin: Path = BIN, env: dict[str, str] | None = None, label: str = ""
    ) -> None:
        port = free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.bin, self.label = bin, label
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api,
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PWD": str(ROOT),
            # Workers import ledgerflow by module path: this checkout's, not an installed copy.
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        self.env.pop("PREFECT_PROFILES_PATH", None)
        self.procs: list[subprocess.Popen[bytes]] = []
        # Each long-running process's output is kept beside the home, for a failure to quote.
        self.logs = home.parent / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.spawn("server", "start", "--host", "127.0.0.1", "--port", str(port))
        # Generous (why: a fresh server migrates its database first, and a machine busy with
        # other tests took 20 s for that alone).
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.api}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("prefect server did not start in 300 s")

    def spawn(self, *args: str, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        log = self.logs / f"{self.label}{len(self.procs)}-{'-'.join(args[:2])}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(self.bin / "prefect"), *args],
                cwd=cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def log_tails(self, chars: int = 6000) -> str:
        """The end of every long-running process's output (server, workers, agents)."""
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}"
            for log in sorted(self.logs.glob("*.log"))
        )

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [str(self.bin / "prefect"), "--no-prompt", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,  # generous: each command imports Prefect, slow on a busy machine
        )
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    @property
    def python_exe(self) -> str:
        return sys.executable if self.bin == BIN else str(self.bin / "python")

    def python(self, code: str) -> str:
        done = subprocess.run(
            [self.python_exe, "-c", code],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,  # generous: each command imports Prefect, slow on a busy machine
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def command(self, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        """Run a `prefect` or `ledgerflow` command line as a user types it."""
        program = {
            "prefect": [str(self.bin / "prefect")],
            "ledgerflow": (
                [sys.executable, "-m", "ledgerflow.cli"]
                if self.bin == BIN
                else [str(self.bin / "ledgerflow")]
            ),
        }
        return subprocess.run(
            [*program[argv[0]], *argv[1:]],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,  # a CLI call that starts Prefect and imports every block: slow when busy
        )

    def api_get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.api}{path}", timeout=30) as r:
            return json.loads(r.read())

    def api_post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"{self.api}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            self.reap(proc, grace=20)

    @staticmethod
    def reap(proc: subprocess.Popen[bytes], grace: float) -> None:
        """Wait for a process told to stop; SIGKILL its group after `grace` seconds.

        A Prefect 2 worker turns SIGTERM into a SIGINT for itself, which a process started in
        the background by a non-interactive shell ignores (as a CI job may be): it would never
        end. Seen in the upgrade test, twice in one busy run."""
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    if shutil.which("prefect", path=str(BIN)) is None:
        pytest.fail("the prefect CLI is not installed beside this interpreter")
    running = Server(tmp_path / "prefect-home")
    try:
        yield running
    finally:
        running.stop()


def wait_for_runs(server: Server, ids: list[str], timeout: float = 600) -> list[str]:
    """Generous timeout (why: each run is a new process importing Prefect on a busy machine)."""
    deadline = time.monotonic() + timeout
    states: list[str] = []
    messages: list[str | None] = []
    while time.monotonic() < deadline:
        states, messages = [], []
        for run_id in ids:
            with urllib.request.urlopen(f"{server.api}/flow_runs/{run_id}", timeout=10) as r:
                run = json.loads(r.read())
                states.append(run["state_type"])
                messages.append((run.get("state") or {}).get("message"))
        if all(s in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for s in states):
            assert states == ["COMPLETED"] * len(ids), f"{messages}\n{server.log_tails()}"
            return states
        time.sleep(1)
    raise AssertionError(
        f"flow runs did not finish in {timeout} s: {states} {messages}\n{server.log_tails()}"
    )


def test_prefect_deploy_and_racing_process_workers(server: Server, tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path / "data", rows=3000)
    pipeline.root.mkdir(exist_ok=True)
    # Blocks go to the real server: save them from a child process that talks to it.
    server.python(
        "import asyncio, sys; from datetime import timedelta; from pathlib import Path\n"
        "sys.path.insert(0, 'tests')\n"
        "from integration.kit import Pipeline\nfrom ledgerflow.demo import DEMO_START\n"
        f"p = Pipeline.attach(Path({str(pipeline.root)!r}), {pipeline.name!r}, "
        f"{pipeline.ledger_url!r})\n"
        "asyncio.run(p.save(end=DEMO_START + timedelta(days=1), concurrency=2, windows_per_run=4))"
    )
    server.run("work-pool", "create", "ledgerflow-process", "--type", "process")
    out = server.run("deploy", "--all")
    assert "on-demand" in out and "backfill" in out
    for _ in range(3):
        server.spawn("worker", "start", "--pool", "ledgerflow-process", "--limit", "2")

    deployments = server.api_post("/deployments/filter", {})
    # prefect.yaml schedules nothing, and a run that names no config is refused when created.
    assert all(d["schedules"] == [] for d in deployments)
    # Both Prefects store the pull step with {{ $PWD }} replaced by the folder deploy ran in.
    pull = [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    assert [d["pull_steps"] for d in deployments] == [pull, pull]
    backfill = next(d for d in deployments if d["name"] == "backfill")
    with pytest.raises(urllib.error.HTTPError) as refused:
        server.api_post(f"/deployments/{backfill['id']}/create_flow_run", {"parameters": {}})
    assert refused.value.code == 409 and "config_block" in refused.value.read().decode()
    runs = [
        server.api_post(
            f"/deployments/{backfill['id']}/create_flow_run",
            {"parameters": {"config_block": pipeline.name, "max_windows": 4}},
        )["id"]
        for _ in range(3)
    ]
    assert wait_for_runs(server, runs) == ["COMPLETED"] * 3
    # Three workers raced for three runs: each run ran once (no worker started one twice).
    assert [server.api_get(f"/flow_runs/{r}")["run_count"] for r in runs] == [1, 1, 1]
    records = asyncio.run(pipeline.records())
    assert len(records) == 12 and {r.pipeline_status for r in records} == {"COMPLETED"}
    # Three runs took four windows each, none taken twice.
    by_run: dict[str, int] = {}
    for r in records:
        by_run[r.dag_run_id or "?"] = by_run.get(r.dag_run_id or "?", 0) + 1
    assert sorted(by_run) == sorted(runs) and set(by_run.values()) == {4}
    expected = pipeline.source_rows_with_ts()
    expected_first_day = pipeline._scalar_row(
        pipeline.source_path,
        "SELECT count(*) FROM web_events WHERE ts >= ? AND ts < ?",
        [DEMO_START, DEMO_START + timedelta(days=1)],
    )[0]
    assert expected_first_day < expected
    assert pipeline.warehouse_rows() == (expected_first_day, expected_first_day)


# A schedule that stays in the future (29 February), so no scheduled run joins the test's runs.
# One window at a time: concurrent DuckDB connections to one file in one process can still fail
# with "already attached" (DuckDB 1.5.5; being fixed separately); this test is about deploying.
CRON = "0 0 29 2 *"
BLOCKS_TOML = """
[ledger]
type = "ledgerflow-ledger-database"
name = "web-events"
url = "{ledger_url}"

[source]
type = "ledgerflow-duckdb-source"
name = "web-events"
path = "{root}/source.duckdb"
table = "web_events"

[stage]
type = "ledgerflow-local-stage"
name = "web-events"
root = "{root}/stage"

[target]
type = "ledgerflow-duckdb-target"
name = "web-events"
path = "{root}/warehouse.duckdb"
table = "web_events"

[pipeline]
type = "ledgerflow-pipeline-config"
name = "web-events"
pipeline_id = "web_events"
start = "{start}"
end = "{end}"
windows_per_run = 4
cron_schedule = "{cron}"
ledger_block = "ledgerflow-ledger-database/web-events"
source_block = "ledgerflow-duckdb-source/web-events"
stage_block = "ledgerflow-local-stage/web-events"
target_block = "ledgerflow-duckdb-target/web-events"
"""


def readme_project(tmp_path: Path, pipeline: Pipeline, end: datetime, extra: str = "") -> Path:
    """The folder a user works in: the README's blocks.toml for `pipeline`, from DEMO_START to
    `end` (`extra` appended to its last table, [pipeline])."""
    project = tmp_path / "project"
    project.mkdir()
    toml = BLOCKS_TOML.format(
        ledger_url=pipeline.ledger_url,
        root=pipeline.root,
        start=DEMO_START.isoformat(),
        end=end.isoformat(),
        cron=CRON,
    )
    (project / "blocks.toml").write_text(toml + extra)
    return project


def walk(server: Server, script: str, cwd: Path) -> list[str]:
    """Run each line of a README bash block as written; return the flow runs it started.

    Two lines need this machine's values: the export (the server's port) and nothing else.
    Long-running commands (a worker, an agent) start in the background.
    """
    runs = []
    for line in script.splitlines():
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        if argv[0] == "export":
            name, _, value = argv[1].partition("=")
            assert name == "PREFECT_API_URL" and value.startswith("http://127.0.0.1:4200/")
            server.env[name] = server.api
            continue
        if argv[:3] in (["prefect", "worker", "start"], ["prefect", "agent", "start"]):
            server.spawn(*argv[1:], cwd=cwd)
            continue
        done = server.command(argv, cwd)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        if argv[:3] == ["prefect", "deployment", "run"]:
            runs.append(re.search(r"UUID: ([0-9a-f-]{36})", done.stdout).group(1))  # type: ignore[union-attr]
        if argv[:2] == ["ledgerflow", "deploy"]:
            assert f"to the Prefect server at {server.api}" in done.stdout, done.stdout
            assert f"schedule {CRON!r} in America/Los_Angeles" in done.stdout, done.stdout
        if argv[:2] == ["ledgerflow", "blocks"] or argv == ["ledgerflow", "init"]:
            assert f"the Prefect server at {server.api}" in done.stdout, done.stdout
    return runs


def test_the_readme_deploy_section_as_written_with_a_worker_then_an_agent(
    server: Server, tmp_path: Path
) -> None:
    pipeline = Pipeline(tmp_path / "data", rows=3000)
    project = readme_project(tmp_path, pipeline, DEMO_START + timedelta(days=1))
    # A config that is not on the server is refused before anything is deployed.
    missing = server.command(["ledgerflow", "deploy", "-c", "nosuch"], project)
    assert missing.returncode == 2
    assert "no pipeline config block named 'nosuch'" in missing.stderr
    assert f"on the Prefect server at {server.api}" in missing.stderr

    worker_run = walk(server, readme_block("## Deploy", "bash", 0), project)
    assert wait_for_runs(server, worker_run) == ["COMPLETED"]

    # The agent block is labelled Prefect 2 only. There it redeploys the same config to an agent
    # pool: the same deployment, moved. Prefect 3 has no agents: deploy refuses an agent pool.
    agent_lines = readme_block("## Deploy", "bash", 1)
    assert agent_lines.startswith("# Prefect 2 only: agents are gone in Prefect 3\n")
    if HAS_AGENTS:
        run_now = readme_block("## Deploy", "bash", 0).splitlines()[-1]
        agent_run = walk(server, f"{agent_lines}\n{run_now}", project)
        assert wait_for_runs(server, agent_run) == ["COMPLETED"]
        pools = ["ledgerflow-process", "ledgerflow-agent"]
    else:
        agent_run, pools = [], ["ledgerflow-process"]
        refuse_agents_on_prefect_3(server, project)

    deployments = server.api_post("/deployments/filter", {})
    assert [d["name"] for d in deployments] == ["web-events"]  # re-running deploy upserted it
    (deployment,) = deployments
    assert deployment["work_pool_name"] == pools[-1]
    assert deployment["parameters"] == {"config_block": "web-events"}
    assert deployment["entrypoint"] == "ledgerflow.flows.pipeline.windowed_pipeline"
    assert [
        (s["schedule"]["cron"], s["schedule"]["timezone"], s["active"])
        for s in deployment["schedules"]
    ] == [(CRON, "America/Los_Angeles", True)]
    runs = {r: server.api_get(f"/flow_runs/{r}") for r in [*worker_run, *agent_run]}
    assert [runs[r]["work_pool_name"] for r in [*worker_run, *agent_run]] == pools
    assert {r["run_count"] for r in runs.values()} == {1}  # each completed on its first try

    pipeline.name = "web_events"  # the pipeline_id of blocks.toml, whose ledger records() reads
    records = asyncio.run(pipeline.records())
    by_run: dict[str, list[str]] = {}
    for r in records:
        by_run.setdefault(r.dag_run_id or "?", []).append(r.pipeline_status)
    # windows_per_run=4 of the day's 12 for each run
    assert by_run.pop("?", []) == ["PENDING"] * (12 - 4 * len(runs))
    assert by_run == {run: ["COMPLETED"] * 4 for run in [*worker_run, *agent_run]}


def refuse_agents_on_prefect_3(server: Server, project: Path) -> None:
    """What the README's Prefect-2-only agent block meets on Prefect 3."""
    # The README's label is true: Prefect 3's CLI has no agent.
    agent = server.command(["prefect", "agent", "start", "--pool", "ledgerflow-agent"], project)
    assert agent.returncode != 0, agent.stdout
    # A missing pool's hint offers the process worker only.
    missing = server.command(["ledgerflow", "deploy", "-c", "web-events", "--pool", "x"], project)
    assert missing.returncode == 2, missing.stdout
    assert "create it with `prefect work-pool create x --type process`\n" in missing.stderr
    assert "agent" not in missing.stderr
    # A prefect-agent pool (Prefect 3's server still stores one, e.g. kept from Prefect 2) would
    # take the deployment and never run it: refused, and nothing is deployed to it.
    server.api_post("/work_pools/", {"name": "ledgerflow-agent", "type": "prefect-agent"})
    argv = ["ledgerflow", "deploy", "-c", "web-events", "--pool", "ledgerflow-agent"]
    refused = server.command(argv, project)
    assert refused.returncode == 2, refused.stdout
    assert (
        "'ledgerflow-agent'" in refused.stderr
        and "is an agent pool (type prefect-agent)" in refused.stderr
    )
    assert "agents are gone in Prefect 3" in refused.stderr
    assert "prefect worker start --pool ledgerflow-process" in refused.stderr
