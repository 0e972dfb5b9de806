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
    """Version 2: placeholder, filled in when the version-2 columns land."""


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
