"""The claim statement: take the next eligible PENDING window and draw its fence number, built
once per dialect and order."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ledgerflow.ledger.models import FENCE_COUNTERS, RECORDS, Status, UTCDateTime
from ledgerflow.ledger.sql import _clock


def _claim_statement(dialect: str, newest_first: bool) -> sa.Update:
    """The claim, built once per dialect and order with bound parameters (its cache key is
    computed once). The stamp and the cutoff are the database's clock unless the caller
    overrides them (`p_stamp`, `p_cutoff`), so one statement serves both."""
    order = RECORDS.c.window_start_time.desc() if newest_first else RECORDS.c.window_start_time
    cutoff = sa.func.coalesce(
        sa.bindparam("p_cutoff", type_=UTCDateTime()),
        _clock(dialect, back=sa.bindparam("p_back", type_=sa.Float())),
    )
    picking = (
        sa.select(RECORDS.c.id)
        .where(
            RECORDS.c.pipeline_id == sa.bindparam("p_pipeline"),
            # A literal, not a parameter: a prepared (generic) plan can then prove the partial
            # claim index's predicate and use it.
            RECORDS.c.pipeline_status == sa.literal_column("'PENDING'"),
            RECORDS.c.window_end_time <= cutoff,
        )
        .order_by(RECORDS.c.priority.desc(), order)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if dialect == "postgresql":
        # One statement: the pick, then the pipeline's counter raised only if a window was
        # picked (the counter's row lock serializes the claims of one pipeline for this
        # statement only), then the window takes that number.
        chosen = picking.cte("pick")
        pick: Any = sa.select(chosen.c.id).scalar_subquery()
        fence: Any = _next_fence_cte(chosen)
    else:
        pick = picking.scalar_subquery()
        fence = _next_fence()
    stamp = sa.func.coalesce(sa.bindparam("p_stamp", type_=UTCDateTime()), _clock(dialect))
    return (
        sa.update(RECORDS)
        .where(RECORDS.c.id == pick)
        .values(
            pipeline_status=Status.IN_PROGRESS.value,
            dag_run_id=sa.bindparam("p_run"),
            pipeline_locked_at=stamp,
            lease_token=sa.bindparam("p_token"),
            # The target's fence: the pipeline's next number, so strictly greater than every
            # earlier claim of any of its windows, including windows a re-tile replaced (a
            # per-window number would start again for a re-cut window). Revocations
            # (release_stale, reopen) need not raise it: until the next claim nobody newer writes
            # the target, so a revoked worker committing meanwhile is the same as one that
            # committed just before losing its lease (the after_load_before_ledger crash the
            # next owner's load replaces), and the next claim's number locks it out.
            fence_token=fence,
            pipeline_start_time=stamp,
            pipeline_end_time=None,
            error_message=None,
            record_last_updated_time=stamp,
        )
        .returning(*RECORDS.columns)
    )


def _next_fence_cte(chosen: sa.CTE) -> Any:
    """Postgres: the pipeline's next fence number, from a writing CTE that raises its counter
    (inserting it when missing, see `_first_fence`) for each row of `chosen` (the picked window,
    or none)."""
    counter = FENCE_COUNTERS.c
    rows = sa.select(sa.bindparam("p_pipeline", type_=sa.String()), _next_fence())
    bump = (
        postgresql.insert(FENCE_COUNTERS)
        .from_select(["pipeline_id", "fence"], rows.select_from(chosen))
        .on_conflict_do_update(index_elements=["pipeline_id"], set_={"fence": counter.fence + 1})
        .returning(counter.fence)
        .cte("fence_bump")
    )
    return sa.select(bump.c.fence).scalar_subquery()


def _next_fence() -> Any:
    """The pipeline's counter plus one (or `_first_fence`). SQLite reads it under the claim's
    write lock and `_record_fence` stores it in the same transaction; Postgres inserts it as a
    missing counter row."""
    last = (
        sa.select(FENCE_COUNTERS.c.fence)
        .where(FENCE_COUNTERS.c.pipeline_id == sa.bindparam("p_pipeline"))
        .scalar_subquery()
    )
    return sa.func.coalesce(last + 1, _first_fence())


def _first_fence() -> Any:
    """A pipeline's number when it has no counter row yet: one above its windows' greatest (a
    counter row lost, or never seeded), so no claim reuses a number. COALESCE evaluates it only
    when the counter row is missing (on Postgres that row's conflict then raises the counter)."""
    return _greatest_fence() + 1


def _greatest_fence() -> Any:
    """The greatest fence number the pipeline's windows hold (0 for none)."""
    most = (
        sa.select(sa.func.max(RECORDS.c.fence_token))
        .where(RECORDS.c.pipeline_id == sa.bindparam("p_pipeline"))
        .scalar_subquery()
    )
    return sa.func.coalesce(most, 0)


def hold_fence_counter(dialect: str) -> sa.Insert:
    """Lock the pipeline's (`p_pipeline`) fence counter row until the transaction ends, which
    every claim of the pipeline raises in its own: whoever holds it first makes the other wait.
    A missing row is created at the greatest fence its windows hold (what the next claim counts
    from, `_first_fence`), so the lock exists to be taken. Changes no number."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    rows = sa.select(sa.bindparam("p_pipeline", type_=sa.String()), _greatest_fence())
    return (
        insert(FENCE_COUNTERS)
        .from_select(["pipeline_id", "fence"], rows)
        .on_conflict_do_update(
            index_elements=["pipeline_id"], set_={"fence": FENCE_COUNTERS.c.fence}
        )
    )


def _record_fence() -> Any:
    """SQLite: store the number the claim just drew as the pipeline's last."""
    return (
        sqlite.insert(FENCE_COUNTERS)
        .values(pipeline_id=sa.bindparam("p_pipeline"), fence=sa.bindparam("p_fence"))
        .on_conflict_do_update(
            index_elements=["pipeline_id"],
            set_={"fence": sa.func.max(FENCE_COUNTERS.c.fence, sa.bindparam("p_fence"))},
        )
    )


_CLAIMS: dict[tuple[str, bool], sa.Update] = {}


def _claim(dialect: str, newest_first: bool) -> sa.Update:
    key = (dialect, newest_first)
    if key not in _CLAIMS:
        _CLAIMS[key] = _claim_statement(dialect, newest_first)
    return _CLAIMS[key]
