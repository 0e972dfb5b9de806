"""`ledgerflow` commands as a user starts them: a new process on a Prefect home of the test's
own, with none of the caller's Prefect settings, and probes to run in such a process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Generous: each command imports Prefect and may migrate a fresh SQLite database, several one
# after the other, on a machine that other test runs keep busy (a migration alone took 22 s).
TIMEOUT = 600
APP = "from ledgerflow.cli import app\napp()\n"
# Every migration of Prefect's database in the process goes through Alembic's upgrade (Alembic
# imports without Prefect, so wrapping it changes nothing of the start): one MIGRATED line each.
COUNT_MIGRATIONS = (
    "import alembic.command, sys\n"
    "_upgrade = alembic.command.upgrade\n"
    "def _counted(*args, **kwargs):\n"
    "    print('MIGRATED', file=sys.stderr)\n"
    "    return _upgrade(*args, **kwargs)\n"
    "alembic.command.upgrade = _counted\n"
)


def home_env(home: Path, **more: str) -> dict[str, str]:
    """This environment without its PREFECT_ settings, on the Prefect home `home`."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(home),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **more,
    }


def cli(home: Path, *args: str, code: str = APP, **more: str) -> subprocess.CompletedProcess[str]:
    """Run `code` (by default the `ledgerflow` command line) with `args`, in the folder above
    `home`, with `more` added to the environment."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=home.parent,
        env=home_env(home, **more),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
