"""Numbered ledger migrations: what turns schema version N-1 into N, run with Alembic's operations.

The ledger stamps its version in `ledgerflow_schema`. `Ledger.create_schema()` (and so
`ledgerflow init`, and every flow run whose ledger block has `auto_create_schema`) creates a
missing schema at the current version, or upgrades an older one in place, step by step, in one
transaction, under a lock so that two workers starting at once do not both migrate.

Alembic's `Operations` are used without an Alembic environment: the steps are few, ship inside
the package, and must run wherever the ledger is opened (no `alembic.ini`, no migration folder to
deploy). `batch_alter_table` makes the same step work on SQLite, which cannot alter columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:  # Alembic is imported only when a ledger really needs upgrading
    from alembic.operations import Operations

Step = Callable[["Operations"], None]


def _v2(op: Operations) -> None:
    """Version 2: the target's fence number, the audit's exact tolerance, a wider percentage,
    one row per pipeline holding its grid and registration watermark, and one fence counter per
    pipeline.

    Existing windows start at fence 0, and each pipeline's counter starts at the greatest fence
    its windows hold (0 from version 1): the next claim takes a greater number than anything
    recorded, and than anything a version-1 worker could have written to a target (it wrote no
    fence at all). The pipeline rows are not filled here: the first run adopts each pipeline's
    grid from its config, and only if its registered windows lie on that grid (see
    `Ledger.register_windows`).
    """
    from ledgerflow.ledger.models import FENCE_COUNTERS, PIPELINES, RECORDS

    op.add_column(
        "pipeline_records",
        sa.Column("fence_token", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.add_column(
        "pipeline_records", sa.Column("audit_tolerance_percent", sa.Numeric(9, 6), nullable=True)
    )
    if op.get_bind().dialect.name != "sqlite":  # SQLite keeps any NUMERIC as it comes
        op.alter_column(
            "pipeline_records",
            "percentage_difference",
            type_=sa.Numeric(25, 4),
            existing_type=sa.Numeric(9, 2),
            existing_nullable=True,
        )
    PIPELINES.create(op.get_bind(), checkfirst=True)
    FENCE_COUNTERS.create(op.get_bind(), checkfirst=True)
    records = sa.table(
        RECORDS.name,
        sa.column("pipeline_id", sa.String()),
        sa.column("fence_token", sa.BigInteger()),
    )
    op.get_bind().execute(
        FENCE_COUNTERS.insert().from_select(
            ["pipeline_id", "fence"],
            sa.select(records.c.pipeline_id, sa.func.max(records.c.fence_token)).group_by(
                records.c.pipeline_id
            ),
        )
    )


STEPS: dict[int, Step] = {2: _v2}
"""Version N: the step that turns a version N-1 ledger into version N."""


def upgrade(connection: sa.Connection, found: int, wanted: int) -> list[int]:
    """Run every step after `found` up to `wanted` on `connection`; return the versions applied."""
    missing = [v for v in range(found + 1, wanted + 1) if v not in STEPS]
    if missing:
        raise RuntimeError(f"no ledger migration step for version(s) {missing}")
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    op = Operations(MigrationContext.configure(connection))
    applied = []
    for version in range(found + 1, wanted + 1):
        STEPS[version](op)
        applied.append(version)
    return applied
