"""The exceptions ledgerflow raises. A docstring is the default message; data rides as attributes.

Errors are classified once, here: a `TransientError` may succeed on retry (a timeout, a refused
connection), a `TerminalError` will not (bad config, bad credentials, an audit mismatch). Task
retry decisions look only at that class.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal


class LedgerflowError(Exception):
    """A ledgerflow operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class TerminalError(LedgerflowError):
    """A failure that no retry will fix."""


class TransientError(LedgerflowError):
    """A failure that may go away on retry."""


class ConfigError(TerminalError, ValueError):
    """The pipeline configuration is invalid.

    Also a ValueError, so a block field validator that raises it becomes a pydantic validation
    error naming the field."""


class ClientSettingsError(ConfigError):
    """A block's settings cannot build its client (a malformed URL, cloud id or option)."""


class DurationError(ConfigError):
    """A duration is not of the form <positive integer><m|h|d>."""


class LedgerSchemaError(TerminalError):
    """The ledger's schema version does not match this ledgerflow."""


class LeaseLost(TerminalError):
    """The window's lease was taken away; this worker stops and writes nothing more."""

    def __init__(self, record_id: int, action: str, why: str = "") -> None:
        self.record_id = record_id
        self.action = action
        super().__init__(
            f"lease on window id={record_id} was lost before '{action}'{why}: another worker or "
            f"the stale-lock cleanup owns it now. This worker stopped: '{action}' was not written "
            "to the ledger, files it staged are left for the next owner to clear, and the "
            "target's fence refuses this worker's load once a newer claim has loaded the window, "
            "so it cannot overwrite newer data"
        )


class FencedOut(TerminalError):
    """A newer claim of the window, or of a window overlapping it (cut on another grid after a
    re-tile), reached the target first; this worker wrote nothing to it."""

    def __init__(
        self, pipeline_id: str, window_start: str, token: int, recorded: int, over: str = ""
    ) -> None:
        self.pipeline_id = pipeline_id
        self.window_start = window_start
        self.token = token
        self.recorded = recorded
        where = f" for the overlapping window {over}" if over else ""
        super().__init__(
            f"pipeline {pipeline_id!r} window {window_start}: this worker's lease (fence token "
            f"{token}) was superseded by a later claim (token {recorded} already recorded by the "
            f"target{where}); the load was aborted and this worker wrote nothing to the target"
        )


class TableOwnedByAnotherPipeline(ConfigError):
    """Another pipeline loads this target table; the load was refused before writing anything.

    A window's load deletes every row of the table in the window's time range, whichever pipeline
    loaded it, so two pipelines sharing a table would silently erase each other's rows."""

    def __init__(self, table: str, owner: str, pipeline_id: str) -> None:
        self.table = table
        self.owner = owner
        self.pipeline_id = pipeline_id
        super().__init__(
            f"target table {table} is loaded by pipeline {owner!r}; pipeline {pipeline_id!r} may "
            "not load it too. Each target table belongs to one pipeline (a window's load replaces "
            "every row in its time range, whichever pipeline loaded it): point the target block "
            f"of pipeline {pipeline_id!r} at another table. Nothing was written"
        )


class RowsOutsideWindow(TerminalError):
    """Loaded rows have a timestamp outside the window (or none); the load was rolled back."""

    def __init__(
        self, outside: int, loaded: int, start: datetime, end: datetime, example: str
    ) -> None:
        self.outside = outside
        self.loaded = loaded
        self.example = example
        super().__init__(
            f"{outside} of the {loaded} loaded rows have a timestamp outside the window "
            f"[{start.isoformat()}, {end.isoformat()}) or none at all (for example {example}); "
            "the load was rolled back. The source returned rows its window's range does not "
            "hold (a timestamp array spanning two windows?); fix the source's timestamp "
            "field or the staged data"
        )


class RecordIncomplete(TerminalError):
    """A window record is missing a field named in check_fields."""


class SourceError(TransientError):
    """Reading the source failed."""


class SourceTerminalError(TerminalError):
    """The source refused the request in a way no retry will fix."""


class StageError(TransientError):
    """Writing to or reading from the stage failed."""


class StageTerminalError(TerminalError):
    """The stage refused the request in a way no retry will fix."""


class TargetError(TransientError):
    """Loading or counting the target failed."""


class TargetTerminalError(TerminalError):
    """The target refused the request in a way no retry will fix."""


class ExtractCountMismatch(TerminalError):
    """The number of documents extracted differs from the source count for the window."""

    def __init__(self, extracted: int, counted: int) -> None:
        self.extracted = extracted
        self.counted = counted
        super().__init__(
            f"extracted {extracted} rows but the source counted {counted} for the window; "
            "refusing to load a window that may be incomplete"
        )


class LoadCountMismatch(TerminalError):
    """The number of rows the target loaded differs from the staged manifest; rolled back."""

    def __init__(self, loaded: int, staged: int) -> None:
        self.loaded = loaded
        self.staged = staged
        super().__init__(
            f"the target loaded {loaded} rows but the stage manifest holds {staged}; "
            "the load was rolled back"
        )


class AuditMismatch(TerminalError):
    """Source and target counts disagree beyond the audit tolerance."""

    def __init__(
        self,
        source_count: int,
        target_count: int,
        pct: Decimal,
        tolerance: Decimal,
        detail: str,
    ) -> None:
        self.source_count = source_count
        self.target_count = target_count
        self.percentage_difference = pct
        self.tolerance = tolerance
        self.detail = detail
        super().__init__(f"audit failed: {detail}")


def is_retryable(exc: BaseException) -> bool:
    """Whether a task that raised `exc` should be retried.

    Unknown exceptions are retried: a driver error we did not classify is more often a hiccup
    than a permanent refusal, and retries are bounded by max_retry_task.
    """
    return not isinstance(exc, TerminalError)
