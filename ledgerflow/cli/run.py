"""`ledgerflow run`: one ad-hoc flow run in this process, Prefect's log lines kept off the
terminal unless asked for."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from ledgerflow.cli.common import (
    ConfigOption,
    JsonOption,
    console,
    in_range,
    need_config,
    open_pipeline,
    run_async,
)


@contextlib.contextmanager
def prefect_console(verbose: bool) -> Iterator[None]:
    """Prefect's log lines off the terminal for a run, unless `verbose` (then at least INFO).

    Through Prefect's own environment overrides of its logging config, because every flow run
    applies that config again (engine `setup_logging()`): levels set on loggers or handlers
    directly would not last into the run. Only the console handler is raised when quiet, so
    the run's logs still reach the Prefect API (the UI)."""
    import logging

    from prefect.logging.configuration import setup_logging

    setup_logging()  # the level the configuration gives, as the run will apply it
    if not verbose:
        overrides = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL"}
    elif logging.getLogger("prefect").getEffectiveLevel() > logging.INFO:
        overrides = {"PREFECT_LOGGING_LOGGERS_PREFECT_LEVEL": "INFO"}
    else:
        overrides = {}
    saved = {name: os.environ.get(name) for name in overrides}
    # An incremental config does not set a level back to 0 (NOTSET): restore them by hand.
    levels = {h: h.level for h in logging.getLogger().handlers}
    os.environ.update(overrides)
    setup_logging()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        setup_logging()
        for handler, level in levels.items():
            handler.setLevel(level)


def run(
    config: ConfigOption = None,
    max_windows: Annotated[
        int | None, typer.Option(help="Process at most this many windows")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show Prefect's log lines while it runs")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Start one ad-hoc flow run in this process; print its window table (the run artifact's)
    and how many eligible windows are still pending."""
    from ledgerflow.report import run_table

    if max_windows is not None:
        in_range("--max-windows", max_windows)
    name = need_config(config)  # a run saves no block: it registers no block type

    async def go() -> tuple[Any, Any, int]:
        from ledgerflow.blocks.config import load_final_config
        from ledgerflow.flows.pipeline import windowed_pipeline

        # Before the flow starts: a config that does not load is one line, not a failed run.
        cfg = await load_final_config(name)
        with prefect_console(verbose):
            state = await windowed_pipeline(
                config_block=name, max_windows=max_windows, return_state=True
            )
        async with open_pipeline(name) as (_, ledger):
            pending = await ledger.count_eligible(cfg.pipeline_id, lag=cfg.lag)
        return cfg, state, pending

    cfg, state, pending = run_async(go())
    from ledgerflow.compat import state_result_sync

    rows = state_result_sync(state, raise_on_failure=False) if not state.is_crashed() else []
    rows = rows if isinstance(rows, list) else []
    budget = max_windows or cfg.windows_per_run
    # Only a run that used its whole budget left them behind; otherwise they became eligible
    # (or were reset) after its last claim.
    still = pending if len(rows) >= budget else 0
    if as_json:
        data = {
            "state": state.type.value,
            "message": state.message,
            "windows": rows,
            "pending_eligible": pending,
        }
        typer.echo(json.dumps(data, default=str))
    else:
        if rows:
            console.print(run_table(rows, f"{cfg.pipeline_id}: {len(rows)} window(s)"))
        console.print(f"[bold]{state.type.value}[/]: ", end="")
        console.print(state.message, markup=False, highlight=False, soft_wrap=True)
        if still:
            console.print(f"{still} window(s) still pending: run again")
    if not state.is_completed():
        raise typer.Exit(code=1)
