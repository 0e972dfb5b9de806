"""The ledger: one table of windows and the only code that writes it."""

from ledgerflow.ledger.models import AuditResult, Phase, PhaseStatus, PipelineRecord, Status
from ledgerflow.ledger.store import (
    Lease,
    Ledger,
    LedgerSummary,
    LedgerUnavailable,
    TilingFault,
    make_engine,
)

__all__ = [
    "AuditResult",
    "Lease",
    "Ledger",
    "LedgerSummary",
    "LedgerUnavailable",
    "Phase",
    "PhaseStatus",
    "PipelineRecord",
    "Status",
    "TilingFault",
    "make_engine",
]
