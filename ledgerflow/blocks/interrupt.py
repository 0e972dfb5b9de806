"""Blocking driver work in a worker thread that a lost lease can interrupt.

Cancelling the coroutine that awaits `asyncio.to_thread` does not stop the thread: a DuckDB or
Snowflake transaction would run on to its COMMIT. `in_thread` runs the work with an `Interrupt`
the work arms with its driver's way to stop a running statement (DuckDB's `interrupt()`, a
Snowflake query cancel). When the awaiting task is cancelled (the heartbeat found the lease lost),
it fires the interrupt, waits a bounded time for the thread to give up, and re-raises. The work
also checks `Interrupt.fired` before it commits. Neither is a guarantee (the commit may already
be on its way): the target's fence, checked inside the transaction, is what decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ledgerflow.errors import TargetError

T = TypeVar("T")


class Interrupt:
    """Where the worker thread leaves the way to stop its running statement."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop: Callable[[], object] | None = None
        self.fired = False

    def arm(self, stop: Callable[[], object] | None) -> None:
        """Set (or clear) how to stop the running statement; fires at once if already fired."""
        with self._lock:
            self._stop = stop
            fired = self.fired
        if fired and stop is not None:
            _quietly(stop)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            stop = self._stop
        if stop is not None:
            _quietly(stop)

    def check(self) -> None:
        """Raise (so the work rolls back) when the lease was lost while the work ran."""
        if self.fired:
            raise TargetError("interrupted: the window's lease was lost; rolled back")


async def in_thread(work: Callable[[Interrupt], T], *, grace: float = 30.0) -> T:
    """Run `work(interrupt)` in a worker thread; on cancellation fire the interrupt, wait up to
    `grace` seconds for the thread to end, and re-raise the cancellation."""
    interrupt = Interrupt()
    future = asyncio.ensure_future(asyncio.to_thread(work, interrupt))
    # Its outcome after a cancellation is nobody's to raise: consume it.
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        interrupt.fire()
        with contextlib.suppress(BaseException):
            await asyncio.wait({future}, timeout=grace)
        _log_outcome(future)
        raise


def _log_outcome(future: asyncio.Future[Any]) -> None:
    """Tell on-call how the interrupted work ended: the LeaseLost that follows cannot know."""
    log = logging.getLogger("ledgerflow")
    if not future.done():
        log.warning("the interrupted target work is still running; the target's fence decides")
    elif future.cancelled() or future.exception() is None:
        log.warning(
            "the target work finished before it could be interrupted; a newer claim's load "
            "(with a greater fence) replaces whatever it committed"
        )
    else:
        log.warning("the interrupted target work ended with: %s", future.exception())


def _quietly(stop: Callable[[], object]) -> None:
    # A connection already closed, a query already done: the interrupt has nothing left to stop.
    with contextlib.suppress(Exception):
        stop()
