"""Commands that set things up: init, blocks register, deploy, demo."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ledgerflow.cli.common import (
    ConfigOption,
    JsonOption,
    console,
    fail,
    need_config,
    prefect_api,
    prefect_ready,
    run_async,
)
from ledgerflow.compat import HAS_AGENTS


def init(
    config: Annotated[
        str | None,
        typer.Option(
            "--config", "-c", help="Also create the ledger schema of this PipelineConfig block"
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Register ledgerflow's block types with Prefect (and create a pipeline's ledger schema).

    Safe to run again. The block types let the Prefect UI create ledgerflow blocks; saving a
    block from Python or `ledgerflow blocks register` registers its own type too.
    """
    prefect_ready()

    async def go() -> tuple[list[str], str | None, list[int]]:
        from ledgerflow.blocks.catalog import register_block_types
        from ledgerflow.prefect_home import saving_blocks

        with saving_blocks():
            slugs = await register_block_types()
        if config is None:
            return slugs, None, []
        from ledgerflow.blocks.config import load_final_config
        from ledgerflow.wiring import load_ledger

        cfg = await load_final_config(config)
        block = await load_ledger(cfg)
        async with block.open() as ledger:
            upgraded = await ledger.create_schema()
        return slugs, str(block.display_url()), upgraded

    slugs, ledger_url, upgraded = run_async(go())
    if as_json:
        data = {"block_types": slugs, "on": prefect_api(), "ledger": ledger_url}
        typer.echo(json.dumps({**data, "upgraded_to": upgraded}))
        return
    console.print(
        f"registered {len(slugs)} block types on {prefect_api()}: {', '.join(slugs)}",
        soft_wrap=True,
    )
    if ledger_url is not None:
        done = f" (upgraded in place to version {upgraded[-1]})" if upgraded else ""
        console.print(f"ledger schema ready at {ledger_url}{done}", soft_wrap=True)


blocks_app = typer.Typer(help="Create the pipeline's blocks.", no_args_is_help=True)


@blocks_app.command("register")
def blocks_register(
    file: Annotated[Path, typer.Option("--file", "-f", help="TOML file describing the blocks")],
    as_json: JsonOption = False,
) -> None:
    """Validate and save every block in the file (`${VAR}` reads the environment)."""
    prefect_ready()  # first: it sets Prefect's settings, which Prefect reads at its import
    from ledgerflow.deployments.save_blocks import register_file
    from ledgerflow.prefect_home import saving_blocks

    with saving_blocks():
        saved = run_async(register_file(file))
    if as_json:
        typer.echo(json.dumps({"saved": saved, "on": prefect_api()}))
        return
    for slug in saved:
        console.print(f"saved {slug}")
    console.print(f"on {prefect_api()}", soft_wrap=True)


POOL_HELP = (
    "Work pool (type process, or prefect-agent for an agent)"
    if HAS_AGENTS
    else "Work pool (type process; Prefect 3 has no agents, so no prefect-agent pool)"
)


def deploy(
    config: ConfigOption = None,
    pool: Annotated[str, typer.Option(help=POOL_HELP)] = "ledgerflow-process",
    name: Annotated[
        str | None, typer.Option(help="Deployment name (default: the config's name)")
    ] = None,
) -> None:
    """Create or update the pipeline's deployment: its schedule, zone and config come from the
    PipelineConfig block on the server in PREFECT_API_URL. Safe to run again."""
    from ledgerflow.deployments.deploy import deploy as apply_deployment

    done = run_async(apply_deployment(need_config(config), pool, name))
    console.print(
        f"deployed {done.full_name} (id {done.id}) to the Prefect server at {done.api_url}: "
        f"work pool {done.pool} ({done.pool_type}), schedule {done.cron!r} in {done.timezone}, "
        f"config_block={done.config_block}",
        markup=False,
        highlight=False,
        soft_wrap=True,  # facts to copy (URLs, commands): never broken across lines
    )
    runner = "agent" if done.pool_type == "prefect-agent" else "worker"  # refused on Prefect 3
    console.print(
        f"start a worker: prefect {runner} start --pool {done.pool}\n"
        f"run it now:     prefect deployment run '{done.full_name}'",
        markup=False,
        highlight=False,
        soft_wrap=True,  # facts to copy (URLs, commands): never broken across lines
    )


def demo(
    root: Annotated[str, typer.Option(help="Folder for the demo's files")] = ".ledgerflow/demo",
    rows: Annotated[int, typer.Option(help="Events to generate")] = 40_000,
) -> None:
    """Run the whole pipeline end to end on the embedded defaults (no services needed).

    The demo keeps its Prefect state to itself: its own PREFECT_HOME under --root and a
    temporary local API, whatever PREFECT_API_URL or profile the shell has, so it never reads
    or overwrites anyone's blocks.
    """
    folder = Path(root).absolute()
    if "prefect" in sys.modules:
        # Prefect reads its settings once, at import: too late to give the demo its own home.
        raise fail("ledgerflow demo must start before Prefect is imported; run it as a command")
    for name in _OTHER_PREFECT_STATE:
        os.environ.pop(name, None)
    home = folder / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)  # Prefect puts its database there at import
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the demo prints its own story
    from ledgerflow.prefect_home import skip_start_registration

    skip_start_registration()  # saving the demo's blocks registers their types
    from ledgerflow.demo import run_demo

    run_async(run_demo(folder, rows, console))


# Settings that would point the demo at someone's server, database or profile.
_OTHER_PREFECT_STATE = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_PROFILE",
    "PREFECT_PROFILES_PATH",
)
