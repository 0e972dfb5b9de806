"""The ledgerflow command line against a real run on the embedded blocks."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
from ledgerflow.cli import app
from ledgerflow.demo import DEMO_START
from typer.testing import CliRunner

from .kit import DriftingTarget, Pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()


def test_run_then_status_shows_counts_lag_and_failures(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, rows=1000)
    name = asyncio.run(
        pipeline.save(target=DriftingTarget, end=DEMO_START + timedelta(hours=4), concurrency=1)
    )

    result = runner.invoke(app, ["run", "-c", name, "--max-windows", "1", "--json"])
    assert result.exit_code == 1, result.output  # the drifting target fails the audit
    data = json.loads(result.stdout)
    assert data["state"] == "FAILED" and "audit failed" in data["message"]
    assert data["windows"][0]["status"] == "FAILED"

    result = runner.invoke(app, ["status", "-c", name, "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["counts"] == {"PENDING": 1, "IN_PROGRESS": 0, "COMPLETED": 0, "FAILED": 1}
    assert status["oldest_pending"]["start"] == "2025-03-08T10:00:00Z"
    assert status["oldest_pending"]["age_seconds"] > 0
    assert status["failed"][0]["error"].startswith("audit failed: source ")
    assert "1 missing" in status["failed"][0]["error"]
    assert status["lag_seconds"] is None

    result = runner.invoke(app, ["status", "-c", name])
    assert result.exit_code == 0
    assert "FAILED: 1" in result.output and "audit failed" in result.output


def test_status_for_an_unknown_config_says_so() -> None:
    result = runner.invoke(app, ["status", "-c", "no-such-config"])
    assert result.exit_code == 2
    assert "no pipeline config block named 'no-such-config'" in result.output
