"""The composition root: saved blocks in, the systems and settings of one pipeline out.

The flow, the CLI and the test harnesses build a run's parts here and nowhere else: each block
is loaded through its own class and checked against the Protocol it is used as, with an error
naming the config field that points at it.
"""

# `load_block(slug, field, Source)` passes a Protocol where `type[P]` is expected; mypy reads
# that as a request to instantiate it ([type-abstract]), but the class is only used for isinstance.
# mypy: disable-error-code="type-abstract"

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, TypeVar

from prefect.blocks.core import Block
from prefect.utilities.dispatch import get_registry_for_type

from ledgerflow.blocks import MODULE_OF_SLUG
from ledgerflow.blocks.config import explain
from ledgerflow.blocks.kinds import SLOT_KIND, check_slot
from ledgerflow.compat import ValidationError
from ledgerflow.compat import load_block as load_with
from ledgerflow.errors import ConfigError
from ledgerflow.ports import LedgerProvider, Source, Stage, Systems, Target

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

    from ledgerflow.blocks.config import PipelineConfig
    from ledgerflow.blocks.ledger_db import LedgerDatabase
    from ledgerflow.tasks.common import RunSettings

P = TypeVar("P")


async def load_block(
    slug: str, field: str, protocol: type[P], client: PrefectClient | None = None
) -> P:
    """Load a block by slug; name the config field when it is missing or of the wrong kind.

    Loading needs the block's class imported. A class already imported is used as it is (a
    read-only command imports the ledger block alone); a ledgerflow type imports its own module
    only (a DuckDB target never loads the Snowflake connector or boto3); any other type imports
    the catalog of every block ledgerflow knows.
    The class's own `load` is called, not `Block.load`: that one imports every installed Prefect
    collection first to look the class up (about a second of a command's start). Without
    `client`, Prefect opens one for this load alone."""
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
        block = await (
            load_with(Block, slug, client)
            if block_class is None
            else load_with(block_class, name, client)
        )
    except RuntimeError as exc:
        # Block.load reports a document that fails validation (saved before a check existed,
        # or written past it) as a RuntimeError caused by the ValidationError.
        if isinstance(exc.__cause__, ValidationError):
            raise explain(exc.__cause__, name, f"{field}={slug!r}") from None
        raise
    except ValueError as exc:
        if "Unable to find block document" not in str(exc):
            raise ConfigError(f"{field}={slug!r} cannot be loaded: {exc}") from None
        raise ConfigError(
            f"{field}={slug!r} names no saved block; {await saved_of_type(block_type)}. Save "
            "it on this Prefect API first: `ledgerflow blocks register --file blocks.toml` or "
            "<BlockClass>.parse_obj({...}).save(name) (see the README, Configure the blocks)"
        ) from None
    if field in SLOT_KIND:
        # Its class is imported now: a block type the config's own check could not judge.
        try:
            check_slot(field, slug)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return _checked(f"{field}={slug!r}", block, protocol)


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


async def saved_of_type(block_type: str) -> str:
    """Which blocks of type `block_type` this Prefect API holds, as a phrase."""
    from httpx import HTTPStatusError
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        try:
            docs = await client.read_block_documents_by_type(block_type, include_secrets=False)
        except HTTPStatusError as exc:
            # A 404: the block type itself is not registered on this API (nothing of it saved).
            if exc.response.status_code != 404:
                raise
            docs = []
    names = sorted(d.name for d in docs if d.name and not d.is_anonymous)
    if not names:
        return f"no {block_type} block is saved on this Prefect API"
    return f"saved {block_type} blocks: {', '.join(names)}"


async def load_target(config: PipelineConfig, client: PrefectClient | None = None) -> Target:
    """The pipeline's target block (alone, for a command that needs only where it loads)."""
    return await load_block(config.target_block, "target_block", Target, client)


async def load_ledger(
    config: PipelineConfig, client: PrefectClient | None = None
) -> LedgerDatabase:
    """The pipeline's ledger block (imports no other block type)."""
    from ledgerflow.blocks.ledger_db import LedgerDatabase

    return await load_block(config.ledger_block, "ledger_block", LedgerDatabase, client)


async def load_systems(config: PipelineConfig, client: PrefectClient | None = None) -> Systems:
    """Every system the pipeline's config points at, read through one Prefect client (each
    client Prefect opens for a load alone builds an HTTP client with its TLS context, and in
    ephemeral mode may start the in-process API again: a tenth of a second or more each)."""
    if client is None:
        from prefect.client.orchestration import get_client

        async with get_client() as opened:
            return await load_systems(config, opened)
    return Systems(
        ledger=await load_ledger(config, client),
        source=await load_block(config.source_block, "source_block", Source, client),
        stage=await load_block(config.stage_block, "stage_block", Stage, client),
        target=await load_target(config, client),
    )


def wire(ledger: object, source: object, stage: object, target: object) -> Systems:
    """Systems from blocks built in code (test harnesses), each checked against its Protocol."""
    return Systems(
        ledger=_checked("ledger", ledger, LedgerProvider),
        source=_checked("source", source, Source),
        stage=_checked("stage", stage, Stage),
        target=_checked("target", target, Target),
    )


def _checked(field: str, block: object, protocol: type[P]) -> P:
    if not isinstance(block, protocol):
        raise ConfigError(
            f"{field} is a {type(block).__name__}, which is not a {protocol.__name__}"
        )
    return block


def settings_from(config: PipelineConfig) -> RunSettings:
    """The part of the config the tasks need, free of Prefect blocks."""
    from ledgerflow.tasks.common import RunSettings

    return RunSettings(
        pipeline_id=config.pipeline_id,
        timezone=config.timezone,
        granularity=config.granularity,
        lag=config.lag,
        start=config.start,
        end=config.end,
        stale_after=config.stale_after,
        max_window_attempts=config.max_window_attempts,
        audit_tolerance_percent=config.audit_tolerance_percent,
        newest_first=config.claim_order == "newest_first",
        check_fields=tuple(config.check_fields),
        hooks=config.key_hooks(),
    )
