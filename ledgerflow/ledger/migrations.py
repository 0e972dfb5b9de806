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
    # The tables version 2 adds (the fence counters seeded from each pipeline's windows), and
    # pipeline_records with AUTOINCREMENT on SQLite: `repair`, which `upgrade` runs last.


def _v3(op: Operations) -> None:
    """Version 3: each pipeline's target (`Target.identity()`), so a run into another table or
    database than the one its windows were loaded into is refused (red-team finding 12).

    Left NULL: the first run after the upgrade records the configured target, once it holds the
    newest loaded window's rows (a config changed while the ledger was at version 2 is refused
    then, `tasks.store_and_validate.check_adoption`). A version-1 ledger has no pipelines table
    yet: `repair` creates it whole."""
    from ledgerflow.ledger.models import PIPELINES

    if PIPELINES.name in sa.inspect(op.get_bind()).get_table_names():
        op.add_column(PIPELINES.name, sa.Column("target", sa.Text(), nullable=True))


STEPS: dict[int, Step] = {2: _v2, 3: _v3}
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
    repair(connection)
    return applied


def missing_tables(connection: sa.Connection) -> list[str]:
    """The current version's tables the ledger lacks (an early build of version 2 stamped the
    ledger 2 before `ledgerflow_fence_counters` existed)."""
    from ledgerflow.ledger.models import CURRENT_TABLES

    have = set(sa.inspect(connection).get_table_names())
    return [t.name for t in CURRENT_TABLES if t.name not in have]


def repair(connection: sa.Connection) -> list[str]:
    """Bring a ledger stamped at the current version to what this version creates; return what
    was done. Run by `create_schema` (so `ledgerflow init`) under its lock, whatever the stamp
    says, so that no ledger an earlier build of this version made stays stuck:

    - a missing table is created; a missing fence counter table is seeded, in the same
      transaction, with each pipeline's greatest `fence_token`, so the next claim draws above
      every number a worker may carry;
    - on SQLite, `pipeline_records` without AUTOINCREMENT is rebuilt with it (see
      `rebuild_records_with_autoincrement`).
    """
    from ledgerflow.ledger.models import CURRENT_TABLES, FENCE_COUNTERS, RECORDS

    done = []
    missing = set(missing_tables(connection))
    for table in CURRENT_TABLES:
        if table.name not in missing:
            continue
        table.create(connection)
        done.append(f"created {table.name}")
        if table is FENCE_COUNTERS:
            records = sa.table(
                RECORDS.name,
                sa.column("pipeline_id", sa.String()),
                sa.column("fence_token", sa.BigInteger()),
            )
            connection.execute(
                FENCE_COUNTERS.insert().from_select(
                    ["pipeline_id", "fence"],
                    sa.select(records.c.pipeline_id, sa.func.max(records.c.fence_token)).group_by(
                        records.c.pipeline_id
                    ),
                )
            )
    if connection.dialect.name == "sqlite" and not _sqlite_autoincrement(connection):
        rebuild_records_with_autoincrement(connection)
        done.append(f"rebuilt {RECORDS.name} with AUTOINCREMENT")
    return done


def _sqlite_autoincrement(connection: sa.Connection) -> bool:
    from ledgerflow.ledger.models import RECORDS

    sql = connection.scalar(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :name"),
        {"name": RECORDS.name},
    )
    return "AUTOINCREMENT" in str(sql or "").upper()


def rebuild_records_with_autoincrement(connection: sa.Connection) -> None:
    """SQLite: recreate `pipeline_records` with AUTOINCREMENT, keeping every row, its id and the
    indexes (the partial claim indexes included, recreated from the model).

    Without AUTOINCREMENT SQLite hands out max(id) + 1, so a window a re-tile deleted had its id
    reused by the next window registered: an operator acting on `retry --id N` from an older
    notification would act on another window. With it, SQLite never reuses an id. The new
    table's sequence starts at the greatest id it holds; ids deleted above that before the
    rebuild cannot be known, so they may be used once more. Runs in the caller's transaction
    (the schema lock's): it all happens or none of it.
    """
    from ledgerflow.ledger.models import RECORDS

    old = f"_{RECORDS.name}_before_autoincrement"
    connection.exec_driver_sql(f'ALTER TABLE "{RECORDS.name}" RENAME TO "{old}"')
    indexes = connection.execute(
        sa.text(
            "SELECT name FROM sqlite_master "
            "WHERE type = 'index' AND tbl_name = :t AND sql IS NOT NULL"
        ),
        {"t": old},
    ).scalars()
    for name in list(indexes):  # the unique constraint's own index goes with its table
        connection.exec_driver_sql(f'DROP INDEX "{name}"')
    RECORDS.create(connection)
    have = {c["name"] for c in sa.inspect(connection).get_columns(old)}
    names = [c.name for c in RECORDS.columns if c.name in have]
    before = sa.table(old, *(sa.column(n) for n in names))
    connection.execute(RECORDS.insert().from_select(names, sa.select(*before.c)))
    connection.exec_driver_sql(f'DROP TABLE "{old}"')
