"""Nested blocks as loaded by Prefect 2, put right.

With prefect 2.20 and prefect-aws 0.4, a nested block's `SecretStr` fields come back from
`Block.load` as plain `str` (an `S3Bucket.load(...)` gives `credentials.aws_secret_access_key`
as `str`), and the collections' own `get_secret_value()` calls then fail. Validating the nested
block again restores the declared types.
"""

from __future__ import annotations

from typing import TypeVar

from prefect.blocks.core import Block

from ledgerflow.compat import model_dump, model_validate

B = TypeVar("B", bound=Block)


def revalidated(block: B) -> B:
    """A copy of `block` with every field validated (and secrets wrapped) again."""
    return model_validate(type(block), model_dump(block))
