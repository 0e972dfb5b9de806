"""Named crash points for the reliability harness (`make chaos`).

`hit(name)` kills the process with SIGKILL when the environment variable LEDGERFLOW_FAILPOINT
equals `name`, exactly like a worker host dying there: no exception handler, no `finally`, no
flush. With `name:stop` it sends itself SIGSTOP instead, like a worker frozen by a long GC pause
or a suspended VM, until someone sends SIGCONT (once per process: the woken worker runs on).
Unset (always, in production) it is one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "after_claim",
    "mid_extract",
    "after_stage_before_ledger",
    "mid_load",
    "after_load_before_ledger",
    "mid_audit",
)

FENCE_POINTS = (
    "before_target_txn",  # in a target's replace, after the last ledger write, before connecting
    "before_commit",  # in a target's replace, every statement run, just before COMMIT
)
"""Where the fencing chaos freezes a worker (`POINT:stop`); also valid crash points."""


_stopped: set[str] = set()


def hit(name: str) -> None:
    chosen = os.environ.get("LEDGERFLOW_FAILPOINT")
    if chosen == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif chosen == f"{name}:stop" and name not in _stopped:
        _stopped.add(name)
        os.kill(os.getpid(), signal.SIGSTOP)
