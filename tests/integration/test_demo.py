"""`ledgerflow demo` as a user runs it: a command in its own process, in a shell that already has
a Prefect profile with a block named `demo` and a PREFECT_API_URL pointing at a server."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ledgerflow.compat import ephemeral_environment

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# Imports the demo must not need: `make demo` installs ledgerflow without its extras.
BLOCK_EXTRAS = """
import importlib.abc, sys
class NoExtras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition('.')[0] in {EXTRAS!r}:
            raise ModuleNotFoundError(f'No module named {{name!r}}', name=name)
sys.meta_path.insert(0, NoExtras())
"""
EXTRAS = {"boto3", "botocore", "prefect_aws", "prefect_snowflake", "snowflake", "elasticsearch"}
# A fresh Prefect home migrates its database on first use; with four other helpers' tests on two
# cores that alone has taken minutes, so each step gets a timeout far above its normal time.
STEP_TIMEOUT = 900


def python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
    )


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_demo_keeps_to_its_own_prefect_state_and_ends_on_ok(tmp_path: Path) -> None:
    user_home = tmp_path / "user-prefect-home"
    user = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    user |= {"PREFECT_HOME": str(user_home), "PYTHONPATH": str(ROOT)}
    # The user's own scripts below start Prefect 3's ephemeral API, a server process that must
    # answer within 20 s by default, and whose telemetry heartbeat races a fresh home's
    # migration: on a busy machine the user's load() timed out. A user's settings, as anyone on a
    # slow machine would set them (Prefect 2 reads neither). The demo runs without them.
    slow_machine = ephemeral_environment()
    user |= slow_machine
    # Prefect 2 migrates a fresh home inside its in-process API's start, which it allows 30 s:
    # on a busy machine the user's first save() timed out there. The user migrates first, with
    # Prefect's own command (both lines have it).
    migrated = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "server", "database", "upgrade", "-y"],
        cwd=tmp_path,
        env=user,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
    )
    assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-2000:]
    saved = python(
        "from ledgerflow.blocks.local_stage import LocalStage\n"
        "LocalStage(root='/srv/users-own-stage').save('demo')\n",
        user,
        tmp_path,
    )
    assert saved.returncode == 0, saved.stderr
    before = digest(user_home)
    assert before

    # The user's shell points at a server nobody runs: the demo must not even try it.
    shell = {k: v for k, v in user.items() if k not in slow_machine}  # the demo's own defaults
    shell |= {"PREFECT_API_URL": "http://127.0.0.1:9/api", "COLUMNS": "80"}
    demo = python(
        BLOCK_EXTRAS.format(EXTRAS=EXTRAS)
        + "sys.argv = ['ledgerflow', 'demo', '--root', 'demo-root', '--rows', '3000']\n"
        "from ledgerflow.cli import app\napp()\n",
        shell,
        tmp_path,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    last = demo.stdout.rstrip("\n").splitlines()[-1]
    # The OK line is whole on one line although stdout is a pipe at 80 columns.
    assert last.startswith("OK  windows: 24 (24 completed, 0 failed)"), demo.stdout[-2000:]
    assert last.endswith(f"ledger rows loaded: {3000 - 4:,}"), last  # 4 of 3000 have no ts
    assert (tmp_path / "demo-root" / "prefect-home").is_dir()

    assert digest(user_home) == before  # not a byte of the user's Prefect state changed
    again = python(
        "from ledgerflow.blocks.local_stage import LocalStage\n"
        "print(LocalStage.load('demo').root)\n",
        user,
        tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "/srv/users-own-stage"
