"""Loading a saved block by its slug, importing only the block class it needs when it can."""

from __future__ import annotations

import importlib
from typing import Any

from prefect.blocks.core import Block
from prefect.utilities.dispatch import get_registry_for_type

from ledgerflow.blocks import MODULE_OF_SLUG
from ledgerflow.errors import ConfigError


async def load_block(slug: str, field: str, protocol: type | None = None) -> Any:
    """Load a block by slug; name the config field when it is missing or of the wrong kind.

    Loading needs the block's class imported. A class already imported is used as it is (a
    read-only command imports the ledger block alone); a ledgerflow type imports its own module
    only (a DuckDB target never loads the Snowflake connector or boto3); any other type imports
    the catalog of every block ledgerflow knows.
    The class's own `load` is called, not `Block.load`: that one imports every installed Prefect
    collection first to look the class up (about a second of a command's start)."""
    block_type, _, name = slug.partition("/")
    if block_type not in (get_registry_for_type(Block) or {}):
        module = MODULE_OF_SLUG.get(block_type)
        if module is not None:
            _import_block_module(module, slug, field)
        else:
            from ledgerflow.blocks import catalog  # noqa: F401  (registers every block type)
    block_class = (get_registry_for_type(Block) or {}).get(block_type)
    try:
        # A class's own load takes the document's name; Block.load the whole slug.
        block = await (Block.load(slug) if block_class is None else block_class.load(name))
    except ValueError as exc:
        raise ConfigError(
            f"{field}={slug!r} names no saved block ({exc}); save it on this Prefect API "
            "first: `ledgerflow blocks register --file blocks.toml` or "
            "<BlockClass>.parse_obj({...}).save(name) (see the README, Configure the blocks)"
        ) from None
    if protocol is not None and not isinstance(block, protocol):
        raise ConfigError(
            f"{field}={slug!r} is a {type(block).__name__}, which is not a {protocol.__name__}"
        )
    return block


def _import_block_module(module: str, slug: str, field: str) -> None:
    """Import the module of a ledgerflow block type; a missing extra names what to install."""
    try:
        importlib.import_module(module)
    except ImportError:
        from ledgerflow.blocks.catalog import MISSING  # tells a missing extra from a bug

        hint = MISSING.get(slug.partition("/")[0])
        if hint is None:
            raise
        raise ConfigError(
            f"{field}={slug!r} is a block whose client library is not installed: {hint}"
        ) from None
