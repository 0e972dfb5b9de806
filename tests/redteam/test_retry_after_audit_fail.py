"""A window's audit FAILs (a row vanished from the target behind the pipeline's back); the audit
artifact says "Reload it once the cause is fixed: `ledgerflow retry`". Meanwhile one other
document is deleted at the source, so the counts are equal again. The retried window is skipped
by pre-validation and shown COMPLETED / MATCH, while the target still lacks the vanished row and
still holds the row the source deleted. Same class as finding 3 (rescan), through `retry`."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from ledgerflow.demo import DEMO_START
from ledgerflow.ledger import Status

from tests.integration.kit import DriftingTarget, Pipeline

from .helpers import cli, ids, query, run

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_a_retried_audit_failure_is_loaded_again_not_skipped_on_equal_counts(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(tmp_path, rows=600)
    lo, hi = DEMO_START, DEMO_START + timedelta(hours=2)
    # The load is followed by someone deleting one target row: the audit fails.
    name = asyncio.run(pipeline.save(target=DriftingTarget, end=hi))
    assert run(name).is_failed()
    [failed] = asyncio.run(pipeline.records())
    assert failed.pipeline_status == Status.FAILED and failed.audit_result == "FAIL"

    # The rogue writer is stopped (plain target again); one other document is deleted at the
    # source, so source and target both hold one row fewer than loaded.
    asyncio.run(pipeline.save(end=hi))
    query(
        pipeline.source_path,
        "DELETE FROM web_events WHERE event_id = "
        "(SELECT max(event_id) FROM web_events WHERE ts >= ? AND ts < ?)",
        [lo, hi],
    )
    assert cli("retry", "-c", name, "--id", str(failed.id)) == {"reset": [failed.id]}
    state = run(name)
    [record] = asyncio.run(pipeline.records())
    assert state.is_completed() and record.pipeline_status == Status.COMPLETED
    [shown] = cli("windows", "-c", name)
    # The promise: a window shown COMPLETED holds the source's rows, each once.
    assert ids(pipeline.warehouse, lo, hi) == ids(pipeline.source_path, lo, hi), (
        f"retry after an audit FAIL was skipped on equal counts: {record.pipeline_status} "
        f"audit {record.audit_result}, transfer {record.stage_to_target_ingestion_status}, "
        f"message {state.message!r}; windows says {shown['status']} {shown['audit']!r}"
    )
