"""Prefect Blocks: the pipeline config and one block per system, each implementing a Protocol.

Names are imported on first use, so that a process using one block does not load every client
library (the Snowflake connector and boto3 alone are ~100 MB). `ledgerflow.blocks.catalog`
imports them all.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "PipelineConfig": "config",
    "LedgerDatabase": "ledger_db",
    "DuckDBSource": "duckdb_source",
    "DuckDBTarget": "duckdb_target",
    "ElasticsearchSource": "elasticsearch",
    "LocalStage": "local_stage",
    "S3Stage": "s3_stage",
    "SnowflakeTarget": "snowflake_target",
    "ALL_BLOCKS": "catalog",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ledgerflow.blocks' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ledgerflow.blocks.{_WHERE[name]}"), name)
