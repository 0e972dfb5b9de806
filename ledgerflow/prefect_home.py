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
from typing import Any

from ledgerflow.compat import PREFECT_3, ephemeral_start

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


# Prefect 2's in-process API also runs its database migrations at every start: Alembic reads
# every migration script again and asks the database for its version, ten times in one
# `ledgerflow run` (0.05 to 0.6 s each, about a second in all). The first start of a command
# migrates under the home's lock; after it the database cannot change version under this
# process. Prefect 3's ephemeral API is a server process of its own, which migrates once.
_MIGRATE_ON_START = "PREFECT_API_DATABASE_MIGRATE_ON_START"


def _import_prefect_migrating_once() -> bool:
    """Import Prefect (2) with migrations off at its API's starts, unless the user chose that
    setting in the environment or Prefect is already imported; a choice in their profile decides
    whether this process migrates once; True when this process must then migrate once
    itself. The environment is put back at once: a process this one starts (a flow run's, a
    server's) still migrates at its own starts."""
    if PREFECT_3 or "prefect" in sys.modules or _MIGRATE_ON_START in os.environ:
        return False
    os.environ[_MIGRATE_ON_START] = "false"
    try:
        import prefect.settings  # Prefect reads its settings here, once
    finally:
        del os.environ[_MIGRATE_ON_START]
    # Prefect hands the settings set in a process to the processes it starts for it (a served
    # flow run's, a worker's: `to_environment_variables(exclude_unset=True)`): read from the
    # environment at import, this one counts as set. Its value stays, for this process only.
    settings: Any = prefect.settings.get_current_settings()
    settings.__fields_set__.discard(_MIGRATE_ON_START)
    from prefect.context import get_settings_context

    setting = prefect.settings.PREFECT_API_DATABASE_MIGRATE_ON_START
    chosen = get_settings_context().profile.settings.get(setting)
    if chosen is not None:  # the user's profile chose (the environment overrode it at import)
        return str(chosen).strip().lower() not in {"0", "false", "f", "no", "n", "off"}
    return not setting.value()


def start_ephemeral_api() -> None:
    """In ephemeral mode, start Prefect's API once under a lock shared by this home's processes."""
    skip_start_registration()
    migrate_once = _import_prefect_migrating_once()
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return  # a server migrates its database once, at its own start
    # Without flock (Windows) there is no lock to take, but the migration must still run: this
    # process's API starts no longer migrate.
    with _home_lock(), warnings.catch_warnings():
        # A fresh home's migration reflects Prefect's own expression indexes, which
        # SQLAlchemy cannot: two warnings about Prefect's schema, nothing a user can act on.
        warnings.filterwarnings(
            "ignore", message="Skipped unsupported reflection of expression-based index"
        )
        if migrate_once:
            from prefect.server.database.alembic_commands import alembic_upgrade

            alembic_upgrade()  # what each start would do: `prefect server database upgrade`
        with (
            ephemeral_start(),
            get_client(sync_client=True) as client,
        ):  # runs the API's start (on Prefect 3, its server process migrates)
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
