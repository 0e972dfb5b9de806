"""What kind of block a slug names (ledger, source, stage or target), and which kinds a
PipelineConfig slot takes, so that a config naming a block of the wrong kind is refused when it
is built, not at run time.

ledgerflow's own block types are listed here, so the check needs no client library imported
(tests/integration/test_configure.py checks the list against the Protocols each class implements). A
block type of yours is judged by its class when that class is imported (it implements
`ledgerflow.ports.Source`, `Stage` or `Target`); otherwise the flow checks it when it loads it.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from prefect.utilities.dispatch import get_registry_for_type

from ledgerflow.blocks import BLOCK_TYPES

LEDGER_TYPE = "ledgerflow-ledger-database"

KIND_OF_TYPE: dict[str, str] = {slug: kind for slug, (_, kind) in BLOCK_TYPES.items()}

SLOT_KIND: dict[str, str] = {
    "ledger_block": "ledger",
    "source_block": "source",
    "stage_block": "stage",
    "target_block": "target",
}


def kinds_of_class(cls: type[Any]) -> set[str]:
    """The kinds a block class is: the ledger, or each Protocol of ledgerflow.ports it has."""
    from ledgerflow.ports import Source, Stage, Target

    if any(getattr(c, "_block_type_slug", None) == LEDGER_TYPE for c in cls.__mro__):
        return {"ledger"}
    protocols = (("source", Source), ("stage", Stage), ("target", Target))
    return {kind for kind, protocol in protocols if issubclass(cls, protocol)}


def kinds_of_type(block_type: str) -> set[str] | None:
    """The kinds of the block type `block_type`; None when it is not known in this process."""
    if block_type in KIND_OF_TYPE:
        return {KIND_OF_TYPE[block_type]}
    cls = (get_registry_for_type(Block) or {}).get(block_type)
    return None if cls is None else kinds_of_class(cls)


def check_slot(slot: str, slug: str) -> None:
    """Refuse `slug` in `slot` when it names a block of another kind, saying what is allowed."""
    want = SLOT_KIND[slot]
    block_type = slug.partition("/")[0]
    kinds = kinds_of_type(block_type)
    if kinds is None or want in kinds:
        return
    ours = sorted(t for t, k in KIND_OF_TYPE.items() if k == want)
    allowed = " or ".join(ours)
    if want != "ledger":
        allowed += f", or a block type of yours implementing ledgerflow.ports.{want.title()}"
    actual = (
        f"a {' and '.join(sorted(kinds))} block ({block_type})"
        if kinds
        else f"a {block_type} block, which is no ledger, source, stage or target"
    )
    raise ValueError(f"{slot}={slug!r} names {actual}; {slot} takes a {want} block: {allowed}")
