"""The ledgerflow command line against a real run on the embedded blocks."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ledgerflow.cli import app
from ledgerflow.demo import DEMO_START
from ledgerflow.ledger import Ledger
from typer.testing import CliRunner

from .kit import BrokenLoadTarget, DriftingTarget, Pipeline

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
    assert result.exit_code == 1, result.output  # a FAILED window needs a person: not 0
    status = json.loads(result.stdout)
    assert status["attention"] == [
        f"1 window(s) FAILED: fix the cause their errors name, then `ledgerflow retry -c {name}`"
    ]
    assert status["counts"] == {"PENDING": 1, "IN_PROGRESS": 0, "COMPLETED": 0, "FAILED": 1}
    assert status["oldest_pending"]["start"] == "2025-03-08T10:00:00Z"
    assert status["oldest_pending"]["age_seconds"] > 0
    assert status["failed"][0]["error"].startswith("audit failed: source ")
    assert "1 missing" in status["failed"][0]["error"]
    assert status["lag_seconds"] is None

    result = runner.invoke(app, ["status", "-c", name])
    assert result.exit_code == 1
    assert "FAILED: 1" in result.output and "audit failed" in result.output
    assert result.output.rstrip().endswith(f"then `ledgerflow retry -c {name}`")
    assert "needs attention: 1 window(s) FAILED" in result.output


def test_status_for_an_unknown_config_says_so() -> None:
    result = runner.invoke(app, ["status", "-c", "no-such-config"])
    assert result.exit_code == 2
    assert "no pipeline config block named 'no-such-config'" in result.output


class ConsoleSpy:
    """What Prefect's console handlers would print: the terminal of a user running the CLI."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from prefect.logging.handlers import PrefectConsoleHandler

        self.records: list[logging.LogRecord] = []
        monkeypatch.setattr(PrefectConsoleHandler, "emit", lambda _h, r: self.records.append(r))

    def take(self, level: int) -> list[str]:
        found = [r.getMessage() for r in self.records if r.levelno == level]
        self.records.clear()
        return found


def test_run_is_quiet_shows_its_window_table_and_what_is_still_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spy = ConsoleSpy(monkeypatch)
    pipeline = Pipeline(tmp_path, rows=1000)
    # Four windows: two before the local day 2025-03-08 starts (empty), two in it.
    name = asyncio.run(
        pipeline.save(
            start=DEMO_START - timedelta(hours=4),
            end=DEMO_START + timedelta(hours=4),
            windows_per_run=2,
            concurrency=1,
        )
    )

    # A user's shell: Prefect logs at INFO (the tests' default is WARNING).
    monkeypatch.setenv("PREFECT_LOGGING_LOGGERS_PREFECT_LEVEL", "INFO")
    result = runner.invoke(app, ["run", "-c", name])
    assert result.exit_code == 0, result.output
    assert spy.take(logging.INFO) == []  # quiet: no Prefect log lines on the terminal
    assert any("Finished in state" in r.getMessage() for r in caplog.records)  # (yet logged)
    monkeypatch.delenv("PREFECT_LOGGING_LOGGERS_PREFECT_LEVEL")
    out = result.stdout
    assert "window (local)" in out and "2025-03-07 20:00 PST" in out and "MATCH: source 0" in out
    assert out.count("COMPLETED") == 3  # two rows and the run's state
    assert "03-08" not in out  # the table holds this run's windows only
    assert out.rstrip().endswith("2 window(s) still pending: run again")

    # The second run takes the last two: nothing is left, so nothing is said about it.
    result = runner.invoke(app, ["run", "-c", name, "-v"])
    assert result.exit_code == 0, result.output
    assert any("Finished in state Completed" in m for m in spy.take(logging.INFO))
    assert "still pending" not in result.stdout and "2025-03-08 00:00 PST" in result.stdout

    result = runner.invoke(app, ["run", "-c", name, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["state"], data["windows"], data["pending_eligible"]) == ("COMPLETED", [], 0)

    # status: "loaded up to" in the pipeline's local time, UTC in JSON.
    result = runner.invoke(app, ["status", "-c", name])
    assert "loaded up to: 2025-03-08 04:00 PST" in result.stdout, result.output
    assert result.exit_code == 0 and "needs attention" not in result.stdout  # nothing to do
    result = runner.invoke(app, ["status", "-c", name, "--json"])
    assert json.loads(result.stdout)["newest_completed_end"] == "2025-03-08T12:00:00+00:00"
    assert json.loads(result.stdout)["attention"] == []

    # A plain date is local midnight in the pipeline's zone (08:00 UTC), not UTC midnight.
    def starts(*args: str) -> list[str]:
        result = runner.invoke(app, ["windows", "-c", name, *args, "--json"])
        assert result.exit_code == 0, result.output
        return [w["start"] for w in json.loads(result.stdout)]

    assert starts("--start", "2025-03-08") == ["2025-03-08T08:00:00Z", "2025-03-08T10:00:00Z"]
    assert starts("--end", "2025-03-08") == ["2025-03-08T04:00:00Z", "2025-03-08T06:00:00Z"]
    assert starts("--start", "2025-03-08T10:00:00Z") == ["2025-03-08T10:00:00Z"]
    result = runner.invoke(app, ["windows", "-c", name, "--end", "2025-03-07"])
    assert result.exit_code == 0
    assert result.stdout.strip().splitlines() == [
        f"no windows match in {name} (starting before 2025-03-07)"
    ]
    bad = runner.invoke(app, ["windows", "-c", name, "--start", "2025-03-32"])
    assert bad.exit_code == 2 and "not an ISO 8601 instant or a date" in bad.output
    help_text = runner.invoke(app, ["windows", "--help"], env={"COLUMNS": "400"}).output
    assert "local midnight in the pipeline's" in " ".join(help_text.split())


def test_run_of_an_unknown_config_is_one_line_and_no_flow_run(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    async def runs_of(config: str) -> int:
        async with get_client() as client:
            runs = await client.read_flow_runs()
        return sum(r.parameters.get("config_block") == config for r in runs)

    saved = asyncio.run(Pipeline(tmp_path, rows=10).save())
    result = runner.invoke(app, ["run", "-c", "no-such-config"])
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith("error: no pipeline config block named 'no-such-config'")
    assert "saved PipelineConfig blocks:" in line and saved in line
    assert asyncio.run(runs_of("no-such-config")) == 0

    # No -c: no silent `default`, but the names to choose from.
    for command in (["run"], ["status"], ["windows"], ["retry"], ["rescan", "--last", "1"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        [line] = result.output.strip().splitlines()
        assert "-c/--config NAME is needed" in line and saved in line, command


def test_windows_show_ids_errors_and_heartbeats_and_retry_refuses_wrong_ids(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(tmp_path, rows=1000)
    name = asyncio.run(
        pipeline.save(target=BrokenLoadTarget, end=DEMO_START + timedelta(hours=4), concurrency=1)
    )
    pipeline.warehouse.with_suffix(".broken").write_text("not parquet")  # every load fails
    result = runner.invoke(app, ["run", "-c", name, "--max-windows", "1"])
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.stdout and "1 window(s) still pending: run again" in result.stdout
    failed, pending = asyncio.run(pipeline.records())
    assert failed.error_message and "audit" not in failed.error_message

    result = runner.invoke(app, ["windows", "-c", name, "--status", "FAILED"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "local window" in line)
    assert header.split()[1] == "id" and header.split()[-2] == "error"
    row = next(line for line in result.stdout.splitlines() if "Sat 03-08 00:00" in line)
    assert row.split()[1] == str(failed.id)
    # The error cell wraps and folds long paths: its text, without the line breaks, is whole.
    cells = [line.split("│")[-2].strip() for line in result.stdout.splitlines() if "│" in line]
    assert "".join(cells).replace(" ", "") == failed.error_message.replace(" ", "")

    # The pending window is claimed by a worker that last beat 40 minutes ago.
    async def stuck() -> None:
        async with Ledger.from_url(pipeline.ledger_url) as ledger:
            now = datetime.now(UTC)
            assert await ledger.claim(name, "w", cutoff=now, now=now - timedelta(minutes=40))

    asyncio.run(stuck())
    result = runner.invoke(app, ["windows", "-c", name, "--status", "IN_PROGRESS"])
    assert "heartbeat" in result.stdout and "0h 40m ago" in result.stdout, result.output
    [row] = json.loads(
        runner.invoke(app, ["windows", "-c", name, "-s", "in_progress", "--json"]).stdout
    )
    assert 40 * 60 <= row["heartbeat_age_seconds"] < 60 * 60

    for bad_id, why in [
        (999, f"--id 999 is not a window of {name}"),
        (pending.id, f"--id {pending.id} is IN_PROGRESS, not FAILED"),
    ]:
        # Alongside a good id: a typo resets nothing.
        result = runner.invoke(
            app, ["retry", "-c", name, "--id", str(failed.id), "--id", str(bad_id)]
        )
        assert result.exit_code == 2, result.output
        assert why in result.output
    assert [r.pipeline_status for r in asyncio.run(pipeline.records())] == ["FAILED", "IN_PROGRESS"]
    result = runner.invoke(app, ["retry", "-c", name, "--id", str(failed.id), "--json"])
    assert json.loads(result.stdout) == {"reset": [failed.id]}


def test_reopened_windows_show_nothing_of_the_load_they_replace_and_empty_results_say_so(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(tmp_path, rows=1000)
    name = asyncio.run(pipeline.save(end=DEMO_START + timedelta(hours=4), concurrency=1))
    assert runner.invoke(app, ["init", "-c", name]).exit_code == 0
    # Nothing has run yet: each command says there is nothing, never an empty table or list.
    empty = {
        ("windows",): f"no windows match in {name}",
        ("retry",): f"no FAILED windows to retry in {name}",
        ("release",): f"no stale locks in {name}",
        ("reload", "--start", "2025-03-08", "--end", "2025-03-09"): (
            f"no COMPLETED or FAILED windows of {name} start in 2025-03-08 - 2025-03-09"
        ),
    }
    for args, says in empty.items():
        result = runner.invoke(app, [args[0], "-c", name, *args[1:]])
        assert result.exit_code == 0, (args, result.output)
        assert result.stdout.strip().splitlines() == [says], (args, result.stdout)
    status = runner.invoke(app, ["status", "-c", name])
    assert "loaded up to: nothing yet" in status.stdout and "│" not in status.stdout

    assert runner.invoke(app, ["run", "-c", name]).exit_code == 0
    loaded = runner.invoke(app, ["windows", "-c", name])
    assert loaded.stdout.count("MATCH") + loaded.stdout.count("PASS") == 2, loaded.stdout

    # Plain dates: the pipeline's local day 2025-03-08, both windows.
    result = runner.invoke(
        app, ["reload", "-c", name, "--start", "2025-03-08", "--end", "2025-03-09"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "2 window(s) reopened; the next run reloads them"
    result = runner.invoke(app, ["windows", "-c", name])
    rows = [line for line in result.stdout.splitlines() if "PENDING" in line]
    assert len(rows) == 2, result.stdout
    for row in rows:
        # No verdict and no counts of the load the reload replaces, no duration either.
        assert "MATCH" not in row and "PASS" not in row and "source" not in row, row
        assert [cell.strip() for cell in row.split("│")[4:8]] == ["-", "-", "0", "-"], row
    data = json.loads(runner.invoke(app, ["windows", "-c", name, "--json"]).stdout)
    assert {
        (w["status"], w["audit_result"], w["source_count"], w["target_count"], w["seconds"])
        for w in data
    } == {("PENDING", None, None, None, None)}
