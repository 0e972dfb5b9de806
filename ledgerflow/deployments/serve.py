"""Serve the pipeline flow from this process (`flow.serve`), for users without work pools.

python -m ledgerflow.deployments.serve --config web-events --cron "0 */2 * * *"
"""

from __future__ import annotations

from typing import Annotated

import typer

from ledgerflow.compat import cron_schedule
from ledgerflow.flows.pipeline import windowed_pipeline
from ledgerflow.prefect_home import start_ephemeral_api


def serve(
    config_block: str = "default",
    cron: str = "0 */2 * * *",
    timezone: str = "America/Los_Angeles",
    name: str | None = None,
) -> None:
    """Serve a scheduled deployment of `windowed_pipeline` until interrupted."""
    start_ephemeral_api()  # its flow runs are processes that share this Prefect home
    windowed_pipeline.serve(  # type: ignore[unused-coroutine, unused-ignore]  # sync when called from sync code
        name=name or f"ledgerflow-{config_block}",
        schedule=cron_schedule(cron, timezone),
        parameters={"config_block": config_block},
    )


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(help=(__doc__ or "").splitlines()[0])
def _command(
    config: Annotated[str, typer.Option(help="PipelineConfig block name")] = "default",
    cron: Annotated[str, typer.Option()] = "0 */2 * * *",
    timezone: Annotated[str, typer.Option()] = "America/Los_Angeles",
    name: Annotated[str | None, typer.Option()] = None,
) -> None:
    serve(config, cron, timezone, name)


def main(argv: list[str] | None = None) -> None:
    app(args=argv, prog_name="python -m ledgerflow.deployments.serve")


if __name__ == "__main__":
    main()
