"""The audit and the operator commands tell the truth (issue 14).

Each test drives the public API (the flow, the CLI, the ledger) through a hostile history and
asserts the window's final status, its audit result and the exact rows in the target.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.cli import app
from ledgerflow.demo import DEMO_START
from ledgerflow.flows.pipeline import LEASE_LOST
from ledgerflow.ledger import AuditResult, Ledger, Phase, PhaseStatus, PipelineRecord, Status
from ledgerflow.ledger.audit import judge
from ledgerflow.ledger.models import RECORDS
from ledgerflow.ports import Fence, Manifest
from ledgerflow.windows import Window, build_record, windows_between
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from typer.testing import CliRunner

from .kit import BrokenLoadTarget, CountingSource, DriftingTarget, Pipeline

pytestmark = pytest.mark.usefixtures("prefect_harness")
runner = CliRunner()
LA = "America/Los_Angeles"
FIRST_END = DEMO_START + timedelta(hours=2)
FAR = datetime(2100, 1, 1, tzinfo=UTC)


class StolenLeaseTarget(DuckDBTarget):
    """The real DuckDB target; while `<warehouse>.steal` exists, another worker takes the window
    and completes it (its ledger row) while this worker's load is running."""

    _block_type_name = "Test Stolen Lease Target"
    _block_type_slug = "test-stolen-lease-target"
    marker: str = "stolen"

    async def replace(self, window: Window, manifest: Manifest, fence: Fence) -> int:
        steal = Path(self.path).with_suffix(".steal")
        if steal.exists():
            url = steal.read_text()
            steal.unlink()
            async with Ledger.from_url(url) as ledger, ledger.engine.begin() as conn:
                await conn.execute(
                    sa.update(RECORDS)
                    .where(RECORDS.c.window_start_time == window.start)
                    .values(lease_token="another-worker", pipeline_status=Status.COMPLETED.value)
                )
        return await super().replace(window, manifest, fence)


def cli(*args: str, code: int = 0) -> Any:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def warehouse(pipeline: Pipeline, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(pipeline.warehouse), read_only=True)
    try:
        con.execute("SET TimeZone='UTC'")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def source_ids(pipeline: Pipeline, window: PipelineRecord) -> list[str]:
    con = duckdb.connect(str(pipeline.source_path), read_only=True)
    try:
        rows = con.execute(
            "SELECT event_id FROM web_events WHERE ts >= ? AND ts < ? ORDER BY 1",
            [window.window_start_time, window.window_end_time],
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


def target_ids(pipeline: Pipeline, window: PipelineRecord) -> list[str]:
    start = window.window_start_time.isoformat()
    end = window.window_end_time.isoformat()
    rows = warehouse(
        pipeline,
        f"SELECT event_id FROM web_events WHERE ts >= '{start}' AND ts < '{end}' ORDER BY 1",
    )
    return [r[0] for r in rows]


def one(pipeline: Pipeline) -> PipelineRecord:
    [row] = asyncio.run(pipeline.records())
    return row


# --- 1. exact tolerance ------------------------------------------------------------------------


def test_one_missing_row_fails_a_tolerance_that_rounding_let_pass(tmp_path: Path) -> None:
    """128 rows, one deleted behind the pipeline's back: 0.78125% is above a 0.78% tolerance,
    although it rounds to 0.78% (the old rule passed it)."""
    pipeline = Pipeline(tmp_path, rows=200)
    pipeline.delete_source_window(DEMO_START, FIRST_END)
    pipeline.add_late_rows(DEMO_START, 128)
    name = asyncio.run(
        pipeline.save(target=DriftingTarget, end=FIRST_END, audit_tolerance_percent=0.78)
    )
    run = cli("run", "-c", name, code=1)
    assert run["state"] == "FAILED" and "audit failed" in run["message"]
    row = one(pipeline)
    assert (row.pipeline_status, row.audit_result) == (Status.FAILED, AuditResult.FAIL)
    assert (row.source_count, row.target_count, row.count_difference) == (128, 127, 1)
    assert row.percentage_difference == Decimal("0.7812")
    assert row.audit_tolerance_percent == Decimal("0.78")
    expected = source_ids(pipeline, row)
    assert target_ids(pipeline, row) == expected[1:]  # the rogue delete took the smallest id
    # What the operator reads, in the run and in `ledgerflow windows`.
    sentence = "source 128, target 127: 1 missing (0.781%) > tolerance 0.78%"
    assert run["windows"][0]["audit"] == sentence
    [listed] = cli("windows", "-c", name)
    assert (listed["audit_result"], listed["audit"]) == ("FAIL", sentence)
    table = runner.invoke(app, ["windows", "-c", name])
    assert table.exit_code == 0 and "FAIL source 128, target 127: 1 missing" in table.output


async def test_a_target_far_larger_than_its_source_is_recorded_not_overflowed(
    ledger: Ledger,
) -> None:
    """NUMERIC(9,2) overflowed on Postgres at 10^5 times the source; the audit was then retried
    as an unknown error and its columns never written."""
    windows = windows_between(DEMO_START, DEMO_START + timedelta(hours=4), LA, "2h")
    await ledger.register([build_record("wide", w, LA) for w in windows])
    for source, target, pct in [
        (1, 100_001, Decimal("10000000.0000")),
        (1, 2**63 - 1, Decimal("922337203685477580600.0000")),
    ]:
        lease = await ledger.claim("wide", "r", cutoff=FAR)
        assert lease is not None
        await ledger.finish_audit(lease, judge(source, target, 0), started=datetime.now(UTC))
        row = await ledger.get(lease.id)
        assert row is not None
        assert (row.pipeline_status, row.audit_result) == (Status.FAILED, AuditResult.FAIL)
        assert (row.source_count, row.target_count) == (source, target)
        if ledger.dialect == "postgresql":
            assert row.percentage_difference == pct
        else:  # SQLite keeps NUMERIC as a float: exact to 15 digits
            assert float(row.percentage_difference or 0) == pytest.approx(float(pct), rel=1e-15)
        assert (row.error_message or "").startswith(f"audit failed: source 1, target {target:,}")


# --- 2. a resumed load checks the stage against the source now ----------------------------------


def test_a_late_row_between_a_failed_load_and_the_retry_is_loaded(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, rows=1000)
    name = asyncio.run(pipeline.save(source=CountingSource, target=BrokenLoadTarget, end=FIRST_END))
    broken = pipeline.warehouse.with_suffix(".broken")
    broken.write_text("this is not parquet")
    assert cli("run", "-c", name, code=1)["state"] == "FAILED"
    failed = one(pipeline)
    assert (failed.pipeline_status, failed.phase_completed) == (Status.FAILED, "SOURCE_TO_STAGE")
    assert failed.target_count == 0 and failed.source_count

    pipeline.add_late_rows(failed.window_start_time + timedelta(minutes=3), 1)
    broken.unlink()
    assert cli("retry", "-c", name) == {"reset": [failed.id]}
    assert cli("run", "-c", name)["state"] == "COMPLETED"
    row = one(pipeline)
    assert (row.pipeline_status, row.audit_result) == (Status.COMPLETED, AuditResult.PASS)
    expected = source_ids(pipeline, row)
    assert "late-0" in expected and target_ids(pipeline, row) == expected
    assert row.source_count == row.target_count == len(expected)
    extracts = pipeline.source_path.with_suffix(".extracts").read_text().split()
    assert len(extracts) == 2, "the stale stage was loaded instead of extracting again"


# --- 3. retry keeps a forced reload forced -------------------------------------------------------


def test_retry_after_a_failed_reload_still_reloads(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, rows=1000)
    name = asyncio.run(pipeline.save(target=BrokenLoadTarget, end=FIRST_END))
    assert cli("run", "-c", name)["state"] == "COMPLETED"
    loaded = one(pipeline)
    # The rows are corrupt in the target, the counts still equal: only a forced reload fixes it.
    con = duckdb.connect(str(pipeline.warehouse))
    con.execute("UPDATE web_events SET path = 'CORRUPT'")
    con.close()
    window = ("--start", DEMO_START.isoformat(), "--end", FIRST_END.isoformat())
    assert cli("reload", "-c", name, *window) == {"reopened": [loaded.id]}
    reopened = one(pipeline)
    assert reopened.force_reload
    # Reopened: nothing of the previous load is shown as if it were current.
    assert (reopened.audit_result, reopened.source_count, reopened.target_count) == (None,) * 3
    assert reopened.stage_to_target_ingestion_status == "PENDING"

    broken = pipeline.warehouse.with_suffix(".broken")
    broken.write_text("this is not parquet")
    assert cli("run", "-c", name, code=1)["state"] == "FAILED"
    assert cli("retry", "-c", name) == {"reset": [loaded.id]}
    retried = one(pipeline)
    assert retried.force_reload, "retry cancelled the pending reload"
    assert (retried.audit_result, retried.source_count, retried.error_message) == (None,) * 3

    broken.unlink()
    assert cli("run", "-c", name)["state"] == "COMPLETED"
    row = one(pipeline)
    assert (row.pipeline_status, row.audit_result) == (Status.COMPLETED, AuditResult.PASS)
    assert row.stage_to_target_ingestion_status == "COMPLETED" and not row.force_reload
    assert warehouse(pipeline, "SELECT count(*) FROM web_events WHERE path = 'CORRUPT'") == [(0,)]
    assert target_ids(pipeline, row) == source_ids(pipeline, row)


# --- 4. rescan recounts both sides ---------------------------------------------------------------


def test_rescan_finds_rows_lost_or_duplicated_in_the_target(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, rows=1500)
    name = asyncio.run(pipeline.save(end=DEMO_START + timedelta(hours=8), concurrency=1))
    assert cli("run", "-c", name)["state"] == "COMPLETED"
    lost, doubled, late, quiet = asyncio.run(pipeline.records())
    con = duckdb.connect(str(pipeline.warehouse))
    con.execute("SET TimeZone='UTC'")
    con.execute(
        "DELETE FROM web_events WHERE event_id = (SELECT min(event_id) FROM web_events "
        "WHERE ts >= ? AND ts < ?)",
        [lost.window_start_time, lost.window_end_time],
    )
    con.execute(
        "INSERT INTO web_events SELECT * FROM web_events WHERE event_id = (SELECT min(event_id) "
        "FROM web_events WHERE ts >= ? AND ts < ?)",
        [doubled.window_start_time, doubled.window_end_time],
    )
    con.close()
    pipeline.add_late_rows(late.window_start_time + timedelta(minutes=1), 2)

    report = cli("rescan", "-c", name, "--last", "4", "--dry-run")
    assert report["checked"] == 4
    changed = {c["record_id"]: c for c in report["changed"]}
    assert set(changed) == {lost.id, doubled.id, late.id}
    assert lost.source_count is not None and doubled.source_count and late.source_count
    assert (changed[lost.id]["source_now"], changed[lost.id]["target_now"]) == (
        lost.source_count,
        lost.source_count - 1,
    )
    assert changed[doubled.id]["target_now"] == doubled.source_count + 1
    assert changed[late.id]["source_now"] == late.source_count + 2
    assert changed[lost.id]["reason"].startswith(
        f"source {lost.source_count:,} != target {lost.source_count - 1:,} now"
    )
    assert not any(c["reopened"] for c in changed.values())

    assert {c["record_id"] for c in cli("rescan", "-c", name, "--last", "4")["changed"]} == set(
        changed
    )
    assert cli("run", "-c", name)["state"] == "COMPLETED"
    rows = asyncio.run(pipeline.records())
    assert {(r.pipeline_status, r.audit_result) for r in rows if r.id != quiet.id} == {
        (Status.COMPLETED, AuditResult.PASS)
    }
    for row in rows:
        assert target_ids(pipeline, row) == source_ids(pipeline, row)
    assert cli("rescan", "-c", name, "--last", "4")["changed"] == []


# --- 5. an audit mismatch is reported as one, whatever the pipeline_id or the artifacts do -------


async def artifacts(key: str) -> list[Any]:
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )


@pytest.mark.parametrize("artifacts_work", [True, False])
def test_an_audit_mismatch_with_a_dotted_pipeline_id_fails_once_as_an_audit_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, artifacts_work: bool
) -> None:
    pipeline = Pipeline(tmp_path, rows=1000)
    pipeline_id = f"Web.Events_v2.{pipeline.name}"
    name = asyncio.run(
        pipeline.save(
            target=DriftingTarget, end=FIRST_END, max_retry_task=3, pipeline_id=pipeline_id
        )
    )
    if not artifacts_work:

        async def down(**_: Any) -> None:
            raise ConnectionError("the Prefect API is down")

        monkeypatch.setattr("ledgerflow.tasks.audit.create_markdown_artifact", down)
        monkeypatch.setattr("ledgerflow.flows.pipeline.create_table_artifact", down)

    run = cli("run", "-c", name, code=1)
    assert run["state"] == "FAILED"
    assert "[audit] audit failed: source" in run["message"] and "lease" not in run["message"]

    async def rows() -> list[PipelineRecord]:
        async with Ledger.from_url(pipeline.ledger_url) as ledger:
            return await ledger.windows(pipeline_id)

    [row] = asyncio.run(rows())
    assert (row.pipeline_status, row.audit_result) == (Status.FAILED, AuditResult.FAIL)
    assert row.source_count is not None and row.target_count == row.source_count - 1
    # Not retried: a retried load would have put the deleted row back.
    assert target_ids(pipeline, row) == source_ids(pipeline, row)[1:]
    slug = f"web-events-v2-{pipeline.name}"
    table = asyncio.run(artifacts(f"ledgerflow-{slug}"))
    note = asyncio.run(artifacts(f"ledgerflow-audit-{slug}"))
    if artifacts_work:
        assert json.loads(table[0].data)[0]["audit"].startswith("FAIL: source ")
        assert "1 missing" in str(note[0].data)
    else:
        assert (table, note) == ([], [])


# --- 6. the run summary counts what this run did -------------------------------------------------


def test_a_window_another_worker_completed_is_not_counted_as_completed_by_this_run(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(tmp_path, rows=1000)
    name = asyncio.run(pipeline.save(target=StolenLeaseTarget, end=FIRST_END))
    pipeline.warehouse.with_suffix(".steal").write_text(pipeline.ledger_url)
    run = cli("run", "-c", name, code=1)
    assert run["message"].startswith("1 window(s): 0 completed, 0 failed, 1 lost to another worker")
    [outcome] = run["windows"]
    assert outcome["status"] == LEASE_LOST
    assert "lease on window" in outcome["message"] and "now says COMPLETED" in outcome["message"]
    row = one(pipeline)
    assert (row.pipeline_status, row.lease_token) == (Status.COMPLETED, "another-worker")
    assert target_ids(pipeline, row) == source_ids(pipeline, row)


# --- 7/8. typed phase bookkeeping; reopened windows show nothing stale ----------------------------


async def test_phase_methods_and_reopen_keep_the_ledger_honest(ledger: Ledger) -> None:
    windows = windows_between(DEMO_START, DEMO_START + timedelta(hours=4), LA, "2h")
    await ledger.register([build_record("typed", w, LA) for w in windows])
    lease = await ledger.claim("typed", "r", cutoff=FAR)
    assert lease is not None
    await ledger.record_counts(lease, 10, 9)
    started = await ledger.start_phase(lease, Phase.SOURCE_TO_STAGE)
    assert started.source_to_stage_ingestion_status == PhaseStatus.IN_PROGRESS
    staged = await ledger.finish_phase(lease, Phase.SOURCE_TO_STAGE, rows=10, manifest="{}")
    assert (staged.phase_completed, staged.extracted_count, staged.stage_manifest) == (
        Phase.SOURCE_TO_STAGE,
        10,
        "{}",
    )
    with pytest.raises(ValueError, match="phase 'PRE_VALIDATION' has no status columns; allowed"):
        await ledger.start_phase(lease, Phase.PRE_VALIDATION)
    failed = await ledger.finish_phase(lease, Phase.STAGE_TO_TARGET, failed=True)
    assert failed.stage_to_target_ingestion_status == PhaseStatus.FAILED
    assert failed.phase_completed == Phase.SOURCE_TO_STAGE  # a failed phase is not a resume point
    await ledger.fail(lease, "[stage to target] the warehouse refused the load")

    # retry: the stage stays (resume), the load's and the audit's results go.
    [retried] = await ledger.reset_failed("typed")
    assert retried.phase_completed == Phase.SOURCE_TO_STAGE and retried.stage_manifest == "{}"
    assert retried.extracted_count == 10
    assert (retried.audit_result, retried.source_count, retried.target_count) == (None,) * 3
    assert retried.percentage_difference is None and retried.pipeline_end_time is None
    assert retried.stage_to_target_ingestion_status == PhaseStatus.PENDING

    # MATCH, then an operator's reopen: nothing of it is left.
    lease = await ledger.claim("typed", "r", cutoff=FAR)
    assert lease is not None
    done = await ledger.skip_transfer(lease, 7, 7)
    assert (done.pipeline_status, done.audit_result) == (Status.COMPLETED, AuditResult.MATCH)
    [reopened] = await ledger.reopen("typed", [lease.id], "operator reload", force=True)
    assert reopened.force_reload and reopened.phase_completed is None
    assert (reopened.audit_result, reopened.source_count, reopened.audit_status) == (
        None,
        None,
        PhaseStatus.PENDING,
    )
    assert reopened.source_to_stage_ingestion_status == PhaseStatus.PENDING
