"""Deploy for real: `prefect server start` on loopback, `prefect deploy` from prefect.yaml, process
workers on the pool, runs that complete against the embedded blocks. Everything started here is
stopped here."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from ledgerflow.demo import DEMO_START

from .kit import Pipeline

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, home: Path) -> None:
        port = _port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api,
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PWD": str(ROOT),
        }
        self.env.pop("PREFECT_PROFILES_PATH", None)
        self.procs: list[subprocess.Popen[bytes]] = []
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

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [str(BIN / "prefect"), *args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,  # generous: each command imports Prefect, slow on a busy machine
        )
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def python(self, code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,  # generous: each command imports Prefect, slow on a busy machine
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

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
            try:
                proc.wait(timeout=20)
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
            assert states == ["COMPLETED"] * len(ids), messages
            return states
        time.sleep(1)
    raise AssertionError(f"flow runs did not finish in {timeout} s: {states} {messages}")


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
    assert "scheduled" in out and "backfill" in out
    for _ in range(3):
        server.spawn("worker", "start", "--pool", "ledgerflow-process", "--limit", "2")

    deployments = server.api_post("/deployments/filter", {})
    backfill = next(d for d in deployments if d["name"] == "backfill")
    runs = [
        server.api_post(
            f"/deployments/{backfill['id']}/create_flow_run",
            {"parameters": {"config_block": pipeline.name, "max_windows": 4}},
        )["id"]
        for _ in range(3)
    ]
    assert wait_for_runs(server, runs) == ["COMPLETED"] * 3
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
