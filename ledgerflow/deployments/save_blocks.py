"""Create and save a pipeline's blocks from a TOML file, with secrets taken from the environment.

Each table is one block: its `type` names the block class, `name` the saved name, the other keys
its fields. `${VAR}` anywhere in a string is replaced by the environment variable VAR (so CI and
secret managers inject credentials; a missing variable is an error, never an empty secret).
In a URL (`scheme://...`), a value that lands in the user info or the query string is
percent-encoded, so a password such as `s3cr3t!@#` cannot break the URL apart; a variable that
holds a whole URL is taken as written.

    [ledger]
    type = "ledgerflow-ledger-database"
    name = "prod"
    url = "postgresql+asyncpg://etl:${LEDGER_PASSWORD}@db:5432/etl"

    [pipeline]
    type = "ledgerflow-pipeline-config"
    name = "web-events"
    pipeline_id = "web_events"
    ledger_block = "ledgerflow-ledger-database/prod"
    ...
"""

from __future__ import annotations

import asyncio
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from prefect.blocks.core import Block

from ledgerflow.blocks.catalog import ALL_BLOCKS, MISSING
from ledgerflow.blocks.config import BLOCK_NAME, PipelineConfig, explain
from ledgerflow.compat import ValidationError, model_validate
from ledgerflow.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def slug_of(block: type[Block] | Block) -> str:
    return str(block.get_block_type_slug())  # type: ignore[no-untyped-call, unused-ignore]


BLOCKS: dict[str, type[Block]] = {slug_of(b): b for b in ALL_BLOCKS}


def _expand(value: Any, where: str, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        encoded = _encoded_spans(value)

        def swap(match: re.Match[str]) -> str:
            var = match.group(1)
            if var not in env:
                raise ConfigError(f"{where} needs environment variable {var}, which is not set")
            if any(lo <= match.start() < hi for lo, hi in encoded):
                return quote(env[var], safe="")
            return env[var]

        return _VAR.sub(swap, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}", env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]", env) for i, v in enumerate(value)]
    return value


def _encoded_spans(template: str) -> list[tuple[int, int]]:
    """Where in a URL template a substituted value must be percent-encoded: the user info
    (between `://` and the `@` before the host) and the query string. The template's own `@`
    and `?` mark them; the values, which may hold those characters, are not in it yet."""
    scheme = _SCHEME.match(template)
    if not scheme:
        return []
    spans = []
    authority_end = len(template)
    for mark in "/?#":
        found = template.find(mark, scheme.end())
        if found >= 0:
            authority_end = min(authority_end, found)
    at = template.rfind("@", scheme.end(), authority_end)
    if at >= 0:
        spans.append((scheme.end(), at))
    query = template.find("?", scheme.end())
    if query >= 0:
        end = template.find("#", query)
        spans.append((query, len(template) if end < 0 else end))
    return spans


def build_blocks(
    document: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> list[tuple[str, Block]]:
    """Validate every table of `document` into a (name, block), or raise one ConfigError."""
    env = os.environ if env is None else env
    built: list[tuple[str, Block]] = []
    for section, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table with type, name and fields")
        fields = dict(table)
        kind, name = fields.pop("type", None), fields.pop("name", None)
        if kind in MISSING:
            raise ConfigError(f"[{section}] type={kind!r} is not installed; {MISSING[kind]}")
        if kind not in BLOCKS:
            raise ConfigError(f"[{section}] type={kind!r} is unknown; allowed: {sorted(BLOCKS)}")
        if not name:
            raise ConfigError(f"[{section}] needs a name to save the block under")
        if not isinstance(name, str) or not BLOCK_NAME.fullmatch(name):
            # Checked before anything is saved: Prefect would refuse it at save, mid-file.
            raise ConfigError(
                f"[{section}] name={name!r} is not a block name; allowed: lowercase letters, "
                "digits and dashes, e.g. web-events"
            )
        try:
            block = model_validate(BLOCKS[kind], _expand(fields, section, env))
        except ValidationError as exc:
            what = "pipeline config" if kind == slug_of(PipelineConfig) else "block"
            raise explain(exc, section, f"{what} [{section}]") from None
        built.append((str(name), block))
    return built


async def register_file(path: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """Save every block the file describes; return their slugs. Nothing is saved on any error."""
    try:
        document = tomllib.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read block file {path}: {exc}") from None
    except UnicodeDecodeError:
        why = "it is not UTF-8 text, as TOML must be"
        raise ConfigError(f"cannot read block file {path}: {why}") from None
    built = build_blocks(document, env)
    if not built:
        raise ConfigError(f"block file {path} describes no block; nothing was saved")
    saved = []
    for name, block in built:
        await block.save(name, overwrite=True)
        saved.append(f"{slug_of(block)}/{name}")
    return saved
