"""The ledger: every SQL statement that touches `pipeline_records` lives in this package.

One code path serves Postgres (asyncpg) and SQLite (aiosqlite). Each operation is one atomic
statement or one transaction. Writes made on behalf of a claimed window are fenced by its lease
token: when the lease was taken away (stale-lock cleanup, an operator), the write touches no row
and `LeaseLost` is raised, so a zombie worker can never commit.

`Ledger` is composed of one part per job: the schema (`schema`), registration and the grid
identity (`registration`), the claim and fenced writes (`leases`), phase progress and the audit
(`phases`), operator commands (`commands`) and reads (`status`), on the engine plumbing of `base`
and `engine` and the SQL expressions of `sql` and `claim_sql`. The names are re-exported here.
"""

from __future__ import annotations

from ledgerflow.ledger.base import LedgerBase
from ledgerflow.ledger.commands import CommandsMixin, Retarget, Retile
from ledgerflow.ledger.engine import LedgerUnavailable, make_engine
from ledgerflow.ledger.leases import Lease, LeasesMixin
from ledgerflow.ledger.phases import PhasesMixin
from ledgerflow.ledger.registration import Chooser, Registration, RegistrationMixin
from ledgerflow.ledger.schema import COMPONENT, SchemaMixin
from ledgerflow.ledger.sql import UPDATABLE
from ledgerflow.ledger.status import LedgerSummary, StatusMixin, TilingFault

__all__ = [
    "COMPONENT",
    "UPDATABLE",
    "Chooser",
    "Lease",
    "Ledger",
    "LedgerSummary",
    "LedgerUnavailable",
    "Registration",
    "Retarget",
    "Retile",
    "TilingFault",
    "make_engine",
]


class Ledger(
    SchemaMixin,
    RegistrationMixin,
    LeasesMixin,
    PhasesMixin,
    CommandsMixin,
    StatusMixin,
    LedgerBase,
):
    """Operations on the ledger. Construct with an engine, or `Ledger.from_url(url)`."""
