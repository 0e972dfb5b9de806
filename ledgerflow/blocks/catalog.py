"""Every ledgerflow block type, imported: what `Block.load("<slug>/<name>")` and
`ledgerflow blocks register` need. Importing it loads every installed client library (boto3, the
Snowflake connector, DuckDB, elasticsearch), so code that needs one block imports that block's
module.

The embedded blocks need only ledgerflow's own dependencies. The production blocks need an extra
(`pip install 'ledgerflow[aws]'`, ...): without it that block is left out of ALL_BLOCKS and
MISSING says which extra would bring it, so `make demo` runs on a plain `pip install -e .`."""

from __future__ import annotations

import importlib

from prefect.blocks.core import Block

from ledgerflow.blocks.config import PipelineConfig
from ledgerflow.blocks.duckdb_source import DuckDBSource
from ledgerflow.blocks.duckdb_target import DuckDBTarget
from ledgerflow.blocks.ledger_db import LedgerDatabase
from ledgerflow.blocks.local_stage import LocalStage

# (module, class, block type slug, extra, the top-level packages that extra installs)
_OPTIONAL = (
    (
        "ledgerflow.blocks.elasticsearch",
        "ElasticsearchSource",
        "ledgerflow-elasticsearch-source",
        "elasticsearch",
        {"elasticsearch", "elastic_transport", "aiohttp"},
    ),
    (
        "ledgerflow.blocks.s3_stage",
        "S3Stage",
        "ledgerflow-s3-stage",
        "aws",
        {"prefect_aws", "boto3", "botocore"},
    ),
    (
        "ledgerflow.blocks.snowflake_target",
        "SnowflakeTarget",
        "ledgerflow-snowflake-target",
        "snowflake",
        {"prefect_snowflake", "snowflake"},
    ),
)


def _optional_blocks() -> tuple[list[type[Block]], dict[str, str]]:
    found: list[type[Block]] = []
    missing: dict[str, str] = {}
    for module, cls, slug, extra, packages in _OPTIONAL:
        try:
            found.append(getattr(importlib.import_module(module), cls))
        except ImportError as exc:
            # Only the extra's own packages may be absent; any other ImportError is a real bug.
            if (exc.name or "").partition(".")[0] not in packages:
                raise
            missing[slug] = f"pip install 'ledgerflow[{extra}]'"
    return found, missing


_FOUND, MISSING = _optional_blocks()
ALL_BLOCKS: list[type[Block]] = [
    PipelineConfig,
    LedgerDatabase,
    DuckDBSource,
    LocalStage,
    DuckDBTarget,
    *_FOUND,
]


async def register_block_types() -> list[str]:
    """Register every installed block type and schema with the current Prefect API, as
    `prefect block register -m ledgerflow.blocks.catalog` does; safe to run again."""
    slugs = []
    for block in ALL_BLOCKS:
        await block.register_type_and_schema()
        slugs.append(str(block.get_block_type_slug()))  # type: ignore[no-untyped-call, unused-ignore]
    return slugs
