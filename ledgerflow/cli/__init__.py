"""The `ledgerflow` command line (typer + rich): `from ledgerflow.cli import app`.

Commands live by job (`read`, `run`, `operate`, `setup`, on what `common` shares) and are
registered here, in the order `--help` lists them."""

from __future__ import annotations

from ledgerflow.cli.common import app
from ledgerflow.cli.operate import backfill, release, reload, rescan, retarget, retile, retry
from ledgerflow.cli.read import plan, status, windows
from ledgerflow.cli.run import run
from ledgerflow.cli.setup import blocks_app, demo, deploy, init

__all__ = ["app"]

for _command in (
    plan,
    init,
    status,
    windows,
    run,
    retry,
    reload,
    release,
    backfill,
    retile,
    retarget,
    rescan,
    deploy,
    demo,
):
    app.command()(_command)
app.add_typer(blocks_app, name="blocks")
