"""Prefect's ephemeral API, started safely by processes that share one PREFECT_HOME.

Without PREFECT_API_URL, each process runs Prefect's API inside itself, over the SQLite database
in PREFECT_HOME. The first start on a fresh home migrates that database; two processes doing that
at the same moment collide (a migration finding its index gone). `start_ephemeral_api` takes a
file lock in PREFECT_HOME and starts the API under it, so the first process finishes that work
before the next begins; after it the migrations find nothing to do. Saving a block registers its
type and schema, and two processes registering the same new type at once collide too (`UNIQUE
constraint failed: block_type.slug`): commands that save blocks save them under the same lock
(`saving_blocks`). With a Prefect server or Cloud there is nothing to do.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ledgerflow.compat import ephemeral_start

try:
    import fcntl
except ImportError:  # Windows: no flock; processes there need one PREFECT_HOME each
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "ledgerflow-ephemeral-start.lock"

# Prefect's API, at each start, imports every installed Prefect collection (prefect-aws,
# prefect-snowflake, ...) to hash the block classes it knows, and registers all of them again
# when the hash differs from memo_store.toml. Prefect 2 starts its in-process API once per event
# loop, several times in one `ledgerflow run`, each start seeing more block classes imported than
# the last: six full registrations per run, about 4.5 of its 10 CPU seconds (profiled). ledgerflow
# needs none of it: saving a block registers its own type and schema (and those of its nested
# blocks), and loading one needs only the saved document. A Prefect server still registers every
# type at its own start, for its UI.
_NO_START_REGISTRATION = {
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
}


def skip_start_registration() -> None:
    """Turn off the block registration of every start of Prefect's API in this process (and in
    the processes it starts), unless the user set those settings. Prefect reads its settings once,
    at import: after it, this does nothing."""
    if "prefect" not in sys.modules:
        for name, value in _NO_START_REGISTRATION.items():
            os.environ.setdefault(name, value)


def start_ephemeral_api() -> None:
    """In ephemeral mode, start Prefect's API once under a lock shared by this home's processes."""
    skip_start_registration()
    from prefect.client.orchestration import get_client

    if not _ephemeral():
        return  # a server migrates its database once, at its own start
    with _home_lock(), warnings.catch_warnings():
        # A fresh home's migration reflects Prefect's own expression indexes, which
        # SQLAlchemy cannot: two warnings about Prefect's schema, nothing a user can act on.
        warnings.filterwarnings(
            "ignore", message="Skipped unsupported reflection of expression-based index"
        )
        with (
            ephemeral_start(),
            get_client(sync_client=True) as client,
        ):  # runs the API's start: migrate
            client.hello()


@contextmanager
def saving_blocks() -> Iterator[None]:
    """Hold this home's lock while blocks are saved (their types and schemas registered), so
    that two commands saving the same new block type do not both create it."""
    with _home_lock():
        yield


def _ephemeral() -> bool:
    """Whether this process runs Prefect's API itself (no PREFECT_API_URL) and can lock."""
    from prefect.settings import PREFECT_API_URL

    return not PREFECT_API_URL.value() and fcntl is not None


@contextmanager
def _home_lock() -> Iterator[None]:
    """This Prefect home's lock, held in ephemeral mode only (a server needs none)."""
    from prefect.settings import PREFECT_HOME

    if not _ephemeral():
        yield
        return
    home = Path(PREFECT_HOME.value())
    home.mkdir(parents=True, exist_ok=True)
    with (home / LOCK_NAME).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield
