"""`windowed_pipeline`: the seed's Main Pipeline DAG as one Prefect flow.

The flow is the one place that wires Blocks into tasks. Per run it registers newly eligible
windows, then up to `concurrency` workers each claim and process windows (one chain of tasks per
window, no subflows: orchestration stays cheap) until `windows_per_run` are done or nothing is
left. Stale-lock cleanup always runs last, whatever happened before, and the run ends with a
table artifact of every window it touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any, TypeVar, cast

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State
from prefect.context import get_run_context
from prefect.states import Completed, Failed
from prefect.utilities.annotations import quote

from ledgerflow.blocks.config import PipelineConfig, load_final_config
from ledgerflow.compat import create_table_artifact, state_result, task_state
from ledgerflow.errors import ConfigError, LeaseLost, LedgerflowError
from ledgerflow.flows.notify import on_flow_failure, retry_notifier
from ledgerflow.ledger import Lease, PipelineRecord, Status
from ledgerflow.ledger.audit import explain_record
from ledgerflow.ports import LedgerProvider, Systems
from ledgerflow.report import run_row
from ledgerflow.tasks.audit import audit
from ledgerflow.tasks.cleanup_stale_locks import cleanup_stale_locks
from ledgerflow.tasks.common import (
    RunSettings,
    artifact_key,
    logger,
    retry_options,
)
from ledgerflow.tasks.pre_validation_count_check import Counts, pre_validation_count_check
from ledgerflow.tasks.source_to_stage import source_to_stage
from ledgerflow.tasks.stage_to_target import stage_to_target
from ledgerflow.tasks.store_and_validate import claim_window, register_windows
from ledgerflow.wiring import load_systems, settings_from

T = TypeVar("T")


LEASE_LOST = "LEASE_LOST"
"""A WindowOutcome status: this run lost the window's lease, so whatever the ledger says now was
written by another worker or an operator, not by this run."""


@dataclass(frozen=True)
class WindowOutcome:
    """One row of a run's summary: what this run did to one window."""

    id: int
    window_start: str
    window_end: str
    local_window: str
    status: str
    source_count: int | None
    target_count: int | None
    audit_result: str | None
    audit: str
    seconds: float
    message: str

    @classmethod
    def of(
        cls, record: PipelineRecord, lease: Lease, timezone: str, seconds: float, message: str
    ) -> WindowOutcome:
        window = record.window
        lo, hi = window.local(timezone)
        # The row still carries this run's token unless someone claimed, released or reopened
        # the window since: only then is its status this run's doing.
        ours = record.lease_token == lease.token
        if not ours:
            message = f"{message}; the ledger now says {record.pipeline_status}, not by this run"
        return cls(
            id=record.id or 0,
            window_start=window.start_iso,
            window_end=window.end_iso,
            local_window=f"{lo:%Y-%m-%d %H:%M %Z} - {hi:%H:%M %Z}",
            status=record.pipeline_status if ours else LEASE_LOST,
            source_count=record.source_count,
            target_count=record.target_count,
            audit_result=record.audit_result,
            audit=explain_record(record),
            seconds=round(seconds, 3),
            message=message,
        )


def as_is(value: T) -> T:
    """Hand `value` to a task untouched (Prefect would walk blocks and rows for futures)."""
    return cast(T, quote(value))  # type: ignore[call-arg, unused-ignore]


class Budget:
    """How many more windows this run may claim; shared by the workers."""

    def __init__(self, windows: int) -> None:
        self.left = windows
        self.exhausted = False

    def take(self) -> bool:
        if self.exhausted or self.left <= 0:
            return False
        self.left -= 1
        return True

    def stop(self) -> None:
        self.exhausted = True


async def _error_of(state: State[Any]) -> BaseException | None:
    result = await state_result(state, raise_on_failure=False)
    return result if isinstance(result, BaseException) else None


def keep_alive(ledgers: LedgerProvider, lease: Lease, every: float) -> asyncio.Task[None]:
    """Heartbeat `lease` every `every` seconds until the returned task is cancelled.

    It runs for the whole chain of a window, so the lease stays fresh through the count phases
    and Prefect's retry waits as well as the transfers (whose own heartbeats stop a phase when
    the lease is lost). Once the lease is gone (completed, failed or taken) it stops quietly:
    the phases' fenced writes are what report a lost lease."""

    async def beat() -> None:
        try:
            async with ledgers.open() as ledger:
                while True:
                    await asyncio.sleep(every)
                    try:
                        await ledger.heartbeat(lease)
                    except LeaseLost:
                        return
                    except LedgerflowError as exc:  # a missed beat is not fatal; retry next
                        logger().warning("keepalive for id=%s: %s", lease.id, exc)
        except LedgerflowError as exc:
            logger().warning("keepalive for id=%s stopped: %s", lease.id, exc)

    return asyncio.create_task(beat())


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def process_window(
    systems: Systems, settings: RunSettings, lease: Lease, options: dict[str, Any]
) -> WindowOutcome:
    """One window through pre-validation, source to stage, stage to target and audit."""
    started = time.perf_counter()
    p, s, l_ = as_is(systems), as_is(settings), as_is(lease)
    message = "loaded"
    phase = "pre-validation"
    beating = keep_alive(systems.ledger, lease, settings.heartbeat_every)
    try:
        state = await task_state(pre_validation_count_check.with_options(**options), p, s, l_)
        if state.is_failed():
            raise await _failure(state, phase)
        counts: Counts = await state_result(state)
        if counts.skipped:
            message = state.message or "skipped"
        else:
            phase = "source to stage"
            state = await task_state(
                source_to_stage.with_options(**options), p, s, l_, counts.source
            )
            if state.is_failed():
                raise await _failure(state, phase)
            manifest = await state_result(state)
            phase = "stage to target"
            state = await task_state(
                stage_to_target.with_options(**options), p, s, l_, as_is(manifest)
            )
            if state.is_failed():
                raise await _failure(state, phase)
            phase = "audit"
            state = await task_state(audit.with_options(**options), p, s, l_)
            if state.is_failed():
                raise await _failure(state, phase)
            message = f"loaded {manifest.rows} row(s) in {len(manifest.files)} file(s)"
    except _PhaseFailed as failure:
        message = str(failure)
        async with systems.ledger.open() as ledger:
            # LeaseLost: the audit already failed it, or another worker owns it now.
            with contextlib.suppress(LeaseLost):
                await ledger.fail(lease, message)
    finally:
        await _stop(beating)
    async with systems.ledger.open() as ledger:
        record = await ledger.get(lease.id)
    assert record is not None
    return WindowOutcome.of(
        record, lease, settings.timezone, time.perf_counter() - started, message
    )


class _PhaseFailed(Exception):
    pass


async def _failure(state: State[Any], phase: str) -> _PhaseFailed:
    exc = await _error_of(state)
    if exc is None:
        detail = state.message or "failed"
    elif isinstance(exc, LedgerflowError):  # our messages already say what happened
        detail = str(exc)
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return _PhaseFailed(f"[{phase}] {detail}")


@flow(
    name="ledgerflow-windowed-pipeline",
    persist_result=False,
    validate_parameters=True,
    on_failure=[on_flow_failure],
)
async def windowed_pipeline(config_block: str, max_windows: int | None = None) -> Any:
    """Load the eligible windows of the pipeline whose PipelineConfig block is `config_block`."""
    log = get_run_logger()
    if max_windows is not None and max_windows < 1:  # 0 would read as "the config's budget"
        raise ConfigError(f"max_windows={max_windows} must be at least 1 (or None: the config's)")
    async with get_client() as client:  # one client for every block the run loads
        config = await load_final_config(config_block, client)
        systems = await load_systems(config, client)
    settings = settings_from(config)
    options = retry_options(
        config.max_retry_task,
        config.retry_backoff_seconds,
        retry_notifier(config) if config.email_on_retry and config.notification_block else None,
    )
    context = get_run_context()
    run_id = str(context.flow_run.id) if getattr(context, "flow_run", None) else "adhoc"  # type: ignore[union-attr]
    outcomes: list[WindowOutcome] = []
    budget = Budget(max_windows or config.windows_per_run)
    idle: list[str] = []
    p, s = as_is(systems), as_is(settings)

    async def worker() -> None:
        while budget.take():
            state = await task_state(claim_window.with_options(**options), p, s, run_id)
            lease = await state_result(state)
            if lease is None:
                log.info(state.message)
                idle.append(state.message or "nothing to claim")
                budget.stop()
                return
            outcomes.append(await process_window(systems, settings, lease, options))

    started = time.perf_counter()
    try:
        registered = await task_state(register_windows.with_options(**options), p, s)
        await state_result(registered)
        log.info(registered.message)
        await asyncio.gather(*(worker() for _ in range(config.concurrency)))
    finally:
        cleanup = await task_state(cleanup_stale_locks.with_options(**options), p, s)
        outcomes.sort(key=lambda o: o.window_start)
        await publish_summary(config, outcomes, time.perf_counter() - started)
    if cleanup.is_failed():
        return Failed(message=f"stale-lock cleanup failed: {cleanup.message}")
    released: list[PipelineRecord] = await state_result(cleanup)
    failed = [o for o in outcomes if o.status != Status.COMPLETED]
    lost = sum(o.status == LEASE_LOST for o in outcomes)
    summary = (
        f"{len(outcomes)} window(s): {len(outcomes) - len(failed)} completed, "
        f"{len(failed) - lost} failed"
    )
    if lost:
        summary += f", {lost} lost to another worker"
    if not outcomes and idle:
        summary += f"; {idle[0]}"
    # Windows whose worker died: the cleanup released them. One that used its last attempt is
    # FAILED by this run, as surely as a window it loaded and failed.
    gave_up = [r for r in released if r.pipeline_status == Status.FAILED]
    if len(released) > len(gave_up):
        summary += (
            f"; {len(released) - len(gave_up)} stale window(s) released to PENDING "
            "(the next run takes them)"
        )
    if gave_up:
        first_stale = gave_up[0]
        summary += (
            f"; {len(gave_up)} stale window(s) FAILED by the stale-lock cleanup after their last "
            f"attempt, first {first_stale.window_start_time.isoformat()} (id={first_stale.id}): "
            f"{first_stale.error_message} (see `ledgerflow windows --status FAILED`)"
        )
    rows = [asdict(o) for o in outcomes]
    if failed:
        first = failed[0]
        return Failed(
            message=f"{summary}; first failure {first.window_start}: {first.message}", data=rows
        )
    if gave_up:
        return Failed(message=summary, data=rows)
    return Completed(message=summary, data=rows)


async def publish_summary(
    config: PipelineConfig, outcomes: list[WindowOutcome], seconds: float
) -> None:
    """The run's table artifact: one row per window, with counts, audit and duration. A failure
    to publish it is logged; it never changes the run's outcome."""
    table = [run_row(asdict(o)) for o in outcomes]
    try:
        await create_table_artifact(
            key=artifact_key(config.pipeline_id),
            table=table or [{"window (local)": "-", "status": "nothing to do"}],
            description=(
                f"ledgerflow `{config.pipeline_id}`: {len(outcomes)} window(s) in {seconds:.1f}s"
            ),
        )
    except Exception as exc:
        logger().warning("run artifact for %s not created: %s", config.pipeline_id, exc)
