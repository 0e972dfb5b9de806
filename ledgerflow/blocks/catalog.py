"""Every ledgerflow block type, imported: what `Block.load("<slug>/<name>")` and
`ledgerflow blocks register` need. Importing it loads every client library (boto3, the Snowflake
connector, DuckDB, elasticsearch), so code that needs one block imports that block's module."""

from __future__ import annotations

from prefect.blocks.core import Block

from ledgerflow.blocks.config import PipelineConfig
from ledgerflow.blocks.duckdb_source import DuckDBSource
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.blocks.elasticsearch import ElasticsearchSource
from ledgerflow.blocks.ledger_db import LedgerDatabase
from ledgerflow.blocks.local_stage import LocalStage
from ledgerflow.blocks.s3_stage import S3Stage
from ledgerflow.blocks.snowflake_target import SnowflakeTarget

ALL_BLOCKS: list[type[Block]] = [
    PipelineConfig,
    LedgerDatabase,
    DuckDBSource,
    ElasticsearchSource,
    LocalStage,
    S3Stage,
    DuckDBTarget,
    SnowflakeTarget,
]
