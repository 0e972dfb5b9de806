"""The PipelineConfig's checks of single values, as plain functions the block's validators
call, and the import of a key hook from its 'package.module:function' path."""

from __future__ import annotations

import importlib
import re
from datetime import UTC, datetime
from typing import Any

from ledgerflow.blocks.kinds import SLOT_KIND, check_slot
from ledgerflow.clock import utc_now
from ledgerflow.compat import cron_is_valid
from ledgerflow.errors import ConfigError
from ledgerflow.windows import KEY_FIELDS, KeyHook

_PIPELINE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")
_HOOK = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_SLUG = re.compile(r"[a-z0-9][a-z0-9\-]*/[A-Za-z0-9][\w\-]*")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
CHECKABLE_FIELDS = (*KEY_FIELDS, "target_day", "time_interval")


def check_pipeline_id(v: str) -> str:
    if not isinstance(v, str) or not _PIPELINE_ID.fullmatch(v):
        raise ValueError(
            f"pipeline_id={v!r} is not allowed; use 1-100 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return v


def check_start(v: datetime | None) -> datetime | None:
    if v is None:
        return None
    if v.tzinfo is None:
        raise ValueError(
            f"start={v.isoformat()!r} has no UTC offset; write e.g. 2025-03-01T00:00:00Z"
        )
    if v > utc_now():
        raise ValueError(f"start={v.isoformat()!r} is in the future; it must be in the past")
    return v.astimezone(UTC)


def check_end(v: datetime | None, values: dict[str, Any]) -> datetime | None:
    if v is None:
        return None
    if v.tzinfo is None:
        raise ValueError(
            f"end={v.isoformat()!r} has no UTC offset; write e.g. 2025-04-01T00:00:00Z"
        )
    start = values.get("start")
    if start is not None and v <= start:
        raise ValueError(f"end={v.isoformat()!r} must be after start={start.isoformat()!r}")
    return v.astimezone(UTC)


def check_cron(v: str) -> str:
    if not cron_is_valid(v):
        raise ValueError(f"cron_schedule={v!r} is not a valid 5-field cron expression")
    return v


def check_email(v: str) -> str:
    if not _EMAIL.fullmatch(v):
        raise ValueError(f"email_list entry {v!r} is not an email address")
    return v


def check_slug(v: str | None, field: Any) -> str | None:
    if v is not None and not _SLUG.fullmatch(v):
        raise ValueError(
            f"{field.name}={v!r} is not a block slug; write '<block-type-slug>/<block-name>', "
            "e.g. 'ledgerflow-duckdb-source/demo'"
        )
    if v is not None and field.name in SLOT_KIND:
        check_slot(field.name, v)
    return v


def check_check_field(v: str) -> str:
    if v not in CHECKABLE_FIELDS:
        raise ValueError(f"check_fields entry {v!r} is unknown; allowed: {list(CHECKABLE_FIELDS)}")
    return v


def check_hook_path(v: str | None, field: Any) -> str | None:
    if v is not None and not _HOOK.fullmatch(v):
        raise ValueError(f"{field.name}={v!r} must be 'package.module:function'")
    return v


def import_hook(field: str, path: str) -> KeyHook:
    module_name, _, attr = path.partition(":")
    try:
        hook = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{field}={path!r} cannot be imported: {exc}") from exc
    if not callable(hook):
        raise ConfigError(f"{field}={path!r} is not callable")
    return hook  # type: ignore[no-any-return]
