"""`make test` runs a representative part of `make chaos`: on both stacks, a kill inside the
target transaction and a kill between a finished stage and its ledger record; a frozen worker
woken after its window was finished, and one frozen before its target transaction while the
source changed, which must commit nothing; and four racing worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def chaos(module: str, *args: str, pg: str | None = None, timeout: int = 1800) -> str:
    """Run a chaos script to the end; its stdout, after checking it exited 0.

    The timeout is generous: the harness took 400 s on a machine busy with other test runs."""
    env = {**os.environ, "LEDGERFLOW_TEST_PG": pg} if pg else None
    done = subprocess.run(
        [sys.executable, "-m", f"tests.chaos.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_sigkill_mid_load_and_before_the_stage_is_recorded_then_recovery() -> None:
    assert "4 passed, 0 failed" in chaos("harness", "mid_load", "after_stage_before_ledger")


@pytest.mark.slow
def test_a_worker_frozen_past_the_stale_threshold_writes_nothing_when_woken(
    pg_admin_dsn: str,
) -> None:
    out = chaos(
        "fencing",
        "--stack",
        "embedded",
        "after_stage_before_ledger",
        "before_target_txn",
        pg=pg_admin_dsn,
    )
    assert "2 passed, 0 failed" in out


@pytest.mark.slow
def test_four_worker_processes_race_over_one_postgres_ledger(pg_admin_dsn: str) -> None:
    out = chaos("racing", "4", "1h", pg=pg_admin_dsn)
    assert "windows processed twice: 0" in out
