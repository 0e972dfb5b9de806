"""Named crash points for the reliability harness (`make chaos`).

`hit(name)` kills the process with SIGKILL when the environment variable LEDGERFLOW_FAILPOINT
equals `name`, exactly like a worker host dying there: no exception handler, no `finally`, no
flush. Unset (always, in production) it is one dictionary lookup.
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


def hit(name: str) -> None:
    if os.environ.get("LEDGERFLOW_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
