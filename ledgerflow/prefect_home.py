"""Prefect's ephemeral API, started safely by processes that share one PREFECT_HOME.

Without PREFECT_API_URL, each process runs Prefect's API inside itself, over the SQLite database
in PREFECT_HOME. The first start on a fresh home migrates that database and registers every block
schema; two processes doing that at the same moment collide (`UNIQUE constraint failed:
block_schema.checksum`, or a migration finding its index gone). `start_ephemeral_api` takes a file
lock in PREFECT_HOME and starts the API under it, so the first process finishes that work before
the next begins; after it Prefect skips the registration (remembered in memo_store.toml) and the
migrations find nothing to do. With a Prefect server or Cloud there is nothing to do.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from ledgerflow.compat import ephemeral_start

try:
    import fcntl
except ImportError:  # Windows: no flock; processes there need one PREFECT_HOME each
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "ledgerflow-ephemeral-start.lock"

# Off for commands that only read block documents. Registering Prefect's built-in block types
# is what saving and the UI need; its memo check alone imports every installed Prefect
# collection (about 1.5 s of a status command's start). The next command that saves blocks
# registers them, under the lock, as before.
_READ_ONLY_SETTINGS = {
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
}


def start_ephemeral_api(*, saves_blocks: bool = True) -> None:
    """In ephemeral mode, start Prefect's API once under a lock shared by this home's processes.

    `saves_blocks=False` (a command that only reads blocks) skips the block type registration,
    when Prefect is not imported yet: its settings are read once, at import."""
    if not saves_blocks and "prefect" not in sys.modules:
        for name, value in _READ_ONLY_SETTINGS.items():
            os.environ.setdefault(name, value)
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    if PREFECT_API_URL.value() or fcntl is None:
        return  # a server registers its block schemas once, at its own start
    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    with (home / LOCK_NAME).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        with warnings.catch_warnings():
            # A fresh home's migration reflects Prefect's own expression indexes, which
            # SQLAlchemy cannot: two warnings about Prefect's schema, nothing a user can act on.
            warnings.filterwarnings(
                "ignore", message="Skipped unsupported reflection of expression-based index"
            )
            with (
                ephemeral_start(),
                get_client(sync_client=True) as client,
            ):  # runs the API's start: migrate, register
                client.hello()
