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

# Each ledgerflow block type's slug, the module that defines it and its kind: loading a saved block
# imports that module alone, and a config slot naming a block of another kind is refused without
# importing any client library (tests/unit/test_blocks_standard.py and
# tests/integration/test_configure.py check this table against the catalog and the Protocols).
BLOCK_TYPES: dict[str, tuple[str, str]] = {
    "ledgerflow-pipeline-config": ("ledgerflow.blocks.config", "pipeline config"),
    "ledgerflow-ledger-database": ("ledgerflow.blocks.ledger_db", "ledger"),
    "ledgerflow-duckdb-source": ("ledgerflow.blocks.duckdb_source", "source"),
    "ledgerflow-duckdb-target": ("ledgerflow.blocks.duckdb_target", "target"),
    "ledgerflow-elasticsearch-source": ("ledgerflow.blocks.elasticsearch.source", "source"),
    "ledgerflow-local-stage": ("ledgerflow.blocks.local_stage", "stage"),
    "ledgerflow-s3-stage": ("ledgerflow.blocks.s3_stage", "stage"),
    "ledgerflow-snowflake-target": ("ledgerflow.blocks.snowflake_target", "target"),
}
MODULE_OF_SLUG = {slug: module for slug, (module, _) in BLOCK_TYPES.items()}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ledgerflow.blocks' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ledgerflow.blocks.{_WHERE[name]}"), name)
