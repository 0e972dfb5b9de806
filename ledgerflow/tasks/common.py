"""What every pipeline task shares: run settings, timing logs, heartbeats and the retry policy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prefect import get_run_logger
from prefect.tasks import exponential_backoff

from ledgerflow.compat import state_result
from ledgerflow.errors import LeaseLost, is_retryable
from ledgerflow.ledger import Lease, Ledger
from ledgerflow.windows import KeyHook


@dataclass(frozen=True)
class RunSettings:
    """The part of the pipeline config the tasks need, free of Prefect blocks."""

    pipeline_id: str
    timezone: str
    granularity: str
    lag: timedelta
    start: datetime | None
    end: datetime | None
    stale_after: timedelta
    max_window_attempts: int
    audit_tolerance_percent: float
    newest_first: bool
    check_fields: tuple[str, ...]
    hooks: dict[str, KeyHook]

    @property
    def heartbeat_every(self) -> float:
        """Heartbeat four times per stale threshold, between 0.5 s and 5 minutes."""
        return min(max(self.stale_after.total_seconds() / 4, 0.5), 300.0)

    @property
    def ledger_silence_limit(self) -> float:
        """How long a phase runs on without reaching the ledger: half the stale threshold.

        Past the threshold the stale-lock cleanup may give the window to another worker; half
        leaves room for clock skew and for the interrupted phase to stop."""
        return self.stale_after.total_seconds() / 2


def logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except Exception:  # outside a run (unit tests, the CLI)
        return logging.getLogger("ledgerflow")


@contextlib.asynccontextmanager
async def timed(step: str, lease: Lease | None = None) -> AsyncIterator[None]:
    """Log how long `step` took and which window it worked on (the seed's logging with timing)."""
    label = f"window {lease.window.start_iso} (id={lease.id})" if lease else "pipeline"
    started = time.perf_counter()
    log = logger()
    try:
        yield
    except BaseException as exc:
        log.warning(
            "%s for %s failed after %.3fs: %s", step, label, time.perf_counter() - started, exc
        )
        raise
    log.info("%s for %s took %.3fs", step, label, time.perf_counter() - started)


@contextlib.asynccontextmanager
async def heartbeat(
    ledger: Ledger, lease: Lease, every: float, *, give_up_after: float
) -> AsyncIterator[None]:
    """Keep the lease fresh while a long phase runs; stop the phase (cancel it, which interrupts
    a target's running statement) as soon as the lease is lost, or once the ledger could not be
    reached for `give_up_after` seconds: by then another worker may own the window, and a
    worker cut off from the ledger must not go on loading as if it still held it."""
    main = asyncio.current_task()
    lost: list[LeaseLost] = []
    last_ok = time.monotonic()  # the phase began right after a fenced ledger write

    async def beat() -> None:
        nonlocal last_ok
        while True:
            await asyncio.sleep(every)
            try:
                # Bounded: a ledger that hangs instead of refusing must not outlast the limit
                # by more than one beat.
                left = max(give_up_after - (time.monotonic() - last_ok), every)
                await asyncio.wait_for(ledger.heartbeat(lease), timeout=left)
                last_ok = time.monotonic()
                continue
            except LeaseLost as exc:
                lost.append(exc)
            except Exception as exc:  # a missed beat is not fatal while the lease is safe
                silent = time.monotonic() - last_ok
                logger().warning(
                    "heartbeat for window id=%s failed (ledger silent for %.1fs): %r",
                    lease.id,
                    silent,
                    exc,
                )
                if silent < give_up_after:
                    continue
                why = (
                    f" (the ledger was unreachable for {silent:.1f}s, past half the stale "
                    f"threshold: the lease may have been released; last error: {exc!r})"
                )
                lost.append(LeaseLost(lease.id, "heartbeat", why))
            if main is not None:
                main.cancel()
            return

    beating = asyncio.create_task(beat())
    try:
        yield
    except asyncio.CancelledError:
        if lost:
            raise lost[0] from None
        raise
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


RetryHook = Callable[[str, int, str, str], Awaitable[None]]
"""Called before a retry with (task name, attempt that failed, error, flow run id)."""


def retry_options(
    retries: int, backoff_seconds: float, on_retry: RetryHook | None = None
) -> dict[str, Any]:
    """Prefect task options: `retries` with exponential backoff, never retrying terminal errors;
    `on_retry` hears about each retry that will happen (the seed's email_on_retry)."""
    delays: list[float] | float = (
        exponential_backoff(backoff_factor=backoff_seconds)(retries)
        if retries and backoff_seconds
        else 0
    )

    async def retry_unless_terminal(task: Any, task_run: Any, state: Any) -> bool:
        exc = await state_result(state, raise_on_failure=False)
        retry = not isinstance(exc, BaseException) or is_retryable(exc)
        if retry and on_retry is not None and task_run.run_count <= retries:
            try:
                await on_retry(task.name, task_run.run_count, f"{exc}", str(task_run.flow_run_id))
            except Exception as hook_error:  # a notification must never change the retry
                logger().warning("retry notification failed: %s", hook_error)
        return retry

    return {
        "retries": retries,
        "retry_delay_seconds": delays,
        "retry_condition_fn": retry_unless_terminal,
    }


def artifact_key(pipeline_id: str, kind: str = "") -> str:
    """The key of a pipeline's Prefect artifact (`kind` "audit" for the mismatch note).

    Prefect allows only lowercase letters, digits and dashes in a key, while a pipeline_id may
    hold `.`, `_` and capitals: every other run of characters becomes one dash. Every artifact
    ledgerflow creates or names takes its key from here."""
    words = ["ledgerflow", kind, pipeline_id.lower()]
    return "-".join(w for w in (re.sub(r"[^a-z0-9]+", "-", w).strip("-") for w in words) if w)
