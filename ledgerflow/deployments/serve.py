"""Serve the pipeline flow from this process (`flow.serve`), for users without work pools.

python -m ledgerflow.deployments.serve --config web-events --cron "0 */2 * * *"
"""

from __future__ import annotations

import argparse

from prefect.client.schemas.schedules import CronSchedule

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
    windowed_pipeline.serve(  # type: ignore[unused-coroutine]  # sync when called from sync code
        name=name or f"ledgerflow-{config_block}",
        schedule=CronSchedule(cron=cron, timezone=timezone),
        parameters={"config_block": config_block},
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", default="default", help="PipelineConfig block name")
    parser.add_argument("--cron", default="0 */2 * * *")
    parser.add_argument("--timezone", default="America/Los_Angeles")
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    serve(args.config, args.cron, args.timezone, args.name)


if __name__ == "__main__":
    main()
