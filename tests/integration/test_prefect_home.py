"""Several ledgerflow processes starting at once on one fresh Prefect home (ephemeral API).

Each process runs Prefect's API in itself; the first start on a fresh home migrates its SQLite
database and registers the block schemas. Unguarded, three processes started together failed
about one in two here (`UNIQUE constraint failed: block_type.slug`, `block_schema.checksum`, or a
migration finding its index gone).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ledgerflow.compat import PREFECT_3

from .cli_kit import APP, COUNT_MIGRATIONS, TIMEOUT, cli, home_env

pytestmark = pytest.mark.slow


def test_commands_started_together_on_a_fresh_prefect_home_all_succeed(tmp_path: Path) -> None:
    env = home_env(tmp_path / "prefect-home")
    procs = []
    for i in range(3):
        blocks = tmp_path / f"blocks{i}.toml"
        blocks.write_text(
            f'[stage]\ntype = "ledgerflow-local-stage"\nname = "stage-{i}"\n'
            f'root = "{tmp_path / f"stage{i}"}"\n'
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", APP, "blocks", "register", "--file", str(blocks)],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output
        assert "UNIQUE constraint failed" not in output
    assert all(f"ledgerflow-local-stage/stage-{i}" in out for i, out in enumerate(outputs))


def test_a_command_without_a_file_lock_still_migrates_a_fresh_home(tmp_path: Path) -> None:
    """Where there is no flock (Windows), a command starts Prefect's API without the home's lock.
    Prefect 2's API starts of a command never migrate (the command migrates once itself), so
    that once must not depend on the lock: a fresh home answered 'no such table: block_type'."""
    no_flock = "import ledgerflow.prefect_home as home\nhome.fcntl = None\n" + APP
    done = cli(tmp_path / "prefect-home", "status", code=no_flock)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "no PipelineConfig block is saved yet" in done.stderr, done.stderr
    assert "no such table" not in done.stdout + done.stderr


def test_processes_prefect_starts_for_a_command_still_migrate_at_their_start(
    tmp_path: Path,
) -> None:
    """A command's own Prefect 2 API starts skip the migration (it migrates once itself), but
    Prefect hands the settings set in a process to the processes it starts for it (a served flow
    run's, a worker's: `to_environment_variables(exclude_unset=True)`): those must not inherit
    the skip, or one of them on another home's database would run on it unmigrated."""
    probe = (
        "from ledgerflow.prefect_home import start_ephemeral_api\n"
        "start_ephemeral_api()\n"
        "from prefect.settings import get_current_settings\n"
        "handed = get_current_settings().to_environment_variables(exclude_unset=True)\n"
        "print('HANDED', handed.get('PREFECT_API_DATABASE_MIGRATE_ON_START'))\n"
    )
    done = cli(tmp_path / "prefect-home", code=probe)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "HANDED None" in done.stdout, done.stdout


# Prefect 3's command process never migrates (its API server process does); and a profiles file
# there must also allow ephemeral mode, which Prefect 2 does not know.
@pytest.mark.skipif(PREFECT_3, reason="the once-per-command migration is Prefect 2's")
def test_a_profile_that_turns_migrations_off_is_obeyed(tmp_path: Path) -> None:
    """PREFECT_API_DATABASE_MIGRATE_ON_START=false in the user's Prefect profile (rather than
    the environment) is their choice too: the command's own once-per-command migration (Prefect
    2) must not override it."""
    home = tmp_path / "prefect-home"

    def status(**more: str) -> subprocess.CompletedProcess[str]:
        return cli(home, "status", code=COUNT_MIGRATIONS + APP, **more)

    done = status()  # migrates the fresh home
    assert done.returncode == 2, (done.stdout, done.stderr)
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        'active = "mine"\n[profiles.mine]\nPREFECT_API_DATABASE_MIGRATE_ON_START = "false"\n'
    )
    done = status(PREFECT_PROFILES_PATH=str(profiles))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "no PipelineConfig block is saved yet" in done.stderr, done.stderr
    assert "MIGRATED" not in done.stderr, done.stderr
