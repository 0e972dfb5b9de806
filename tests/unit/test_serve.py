"""`python -m ledgerflow.deployments.serve`: its options reach `flow.serve` as they did."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from ledgerflow.deployments import serve as serve_module
from ledgerflow.flows.pipeline import windowed_pipeline
from prefect.client.schemas.schedules import CronSchedule
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What `windowed_pipeline.serve` was called with (nothing is served, no API is started)."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(serve_module, "start_ephemeral_api", lambda: calls.append({"api": True}))
    monkeypatch.setattr(windowed_pipeline, "serve", lambda **kwargs: calls.append(kwargs))
    return calls


def test_the_defaults_serve_the_default_config_every_two_hours_in_los_angeles(
    served: list[dict[str, Any]],
) -> None:
    result = runner.invoke(serve_module.app, [])
    assert result.exit_code == 0, result.output
    assert served[0] == {"api": True}
    call = served[1]
    assert call["name"] == "ledgerflow-default"
    assert call["parameters"] == {"config_block": "default"}
    assert call["schedule"] == CronSchedule(cron="0 */2 * * *", timezone="America/Los_Angeles")


def test_every_option_reaches_the_deployment(served: list[dict[str, Any]]) -> None:
    result = runner.invoke(
        serve_module.app,
        [
            "--config",
            "web-events",
            "--cron",
            "15 3 * * *",
            "--timezone",
            "UTC",
            "--name",
            "nightly",
        ],
    )
    assert result.exit_code == 0, result.output
    call = served[1]
    assert call["name"] == "nightly"
    assert call["parameters"] == {"config_block": "web-events"}
    assert call["schedule"] == CronSchedule(cron="15 3 * * *", timezone="UTC")


def test_the_name_defaults_to_the_config(served: list[dict[str, Any]]) -> None:
    result = runner.invoke(serve_module.app, ["--config", "web-events"])
    assert result.exit_code == 0, result.output
    assert served[1]["name"] == "ledgerflow-web-events"


def test_an_unknown_option_is_refused_and_nothing_is_served(served: list[dict[str, Any]]) -> None:
    result = runner.invoke(serve_module.app, ["--config-block", "web-events"])
    assert result.exit_code == 2
    assert "No such option: --config-block" in result.output
    assert served == []


def test_the_module_runs_and_documents_its_options() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ledgerflow.deployments.serve", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: python -m ledgerflow.deployments.serve" in done.stdout
    for option in ("--config", "--cron", "--timezone", "--name", "PipelineConfig block name"):
        assert option in done.stdout
