"""Checks every ledgerflow block shares: no unknown fields, numbers within their range, node URLs
the clients accept, and client-construction errors classified as terminal.

A typo in a block's settings must fail when the block is built (so `save`, `blocks register
--file` and the load at flow start refuse it), never after a run has retried it three times.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from ledgerflow.compat import field_aliases, root_validator, validator
from ledgerflow.errors import ClientSettingsError, LedgerflowError
from ledgerflow.redact import scrub_url, scrub_urls

# Keys Prefect itself puts into a block's data: `Block.dict()` adds the type's slug for
# dispatch, and a saved or loaded block's dict carries its document's metadata, so
# `parse_obj(block.dict())` must accept them.
_PREFECT_KEYS = frozenset(
    {
        "block_type_slug",
        "_block_type_id",
        "_block_schema_id",
        "_block_schema_capabilities",
        "_block_schema_version",
        "_block_document_id",
        "_block_document_name",
        "_is_anonymous",
    }
)


def unknown_field_message(given: str, known: list[str]) -> str:
    """`given` is not a field: name it, suggest the closest field, list the allowed ones."""
    close = difflib.get_close_matches(given, known, n=1, cutoff=0.6)
    if close:
        return f"{given!r} is not a field; did you mean {close[0]!r}?"
    return f"{given!r} is not a field; allowed: {', '.join(sorted(known))}"


def _reject_unknown(cls: Any, values: Any) -> Any:
    if not isinstance(values, dict):
        return values
    aliases = field_aliases(cls)
    known = set(aliases) | set(aliases.values())
    unknown = [k for k in values if k not in known and k not in _PREFECT_KEYS]
    if unknown:
        names = sorted(set(aliases.values()))
        raise ValueError("; ".join(unknown_field_message(str(k), names) for k in unknown))
    return values


def forbid_unknown_fields() -> Any:
    """A pre root validator refusing keys that are not fields, with the closest one suggested.

    Prefect's `Block` allows extra keys (and pydantic drops them on save), so a misspelled
    `windows_per_rum` would be accepted and silently ignored. `extra = "forbid"` would also refuse
    the `block_type_slug` Prefect adds to a block's data, and say nothing about the typo.
    Assign it in the class body: `_known_fields = forbid_unknown_fields()`."""
    return root_validator(pre=True, allow_reuse=True)(_reject_unknown)


def in_range(field: str, lo: float, hi: float, *, note: str = "") -> Any:
    """A validator refusing a value of `field` outside [lo, hi], both ends allowed, with the
    message `"{field}={value!r} must be between {lo} and {hi}{note}"` (so `note` starts with its
    own separator, e.g. `" (S3's limits)"`). None passes: an unset optional field is not checked.
    Assign it in the class body: `_retries = in_range("max_retry_task", 0, 10)`."""

    def check(v: Any) -> Any:
        if v is not None and not lo <= v <= hi:
            raise ValueError(f"{field}={v!r} must be between {lo} and {hi}{note}")
        return v

    check.__name__ = check.__qualname__ = f"_{field}_in_range"
    return validator(field, allow_reuse=True)(check)


def check_node_url(where: str, url: str) -> None:
    """Refuse a node URL the Elasticsearch client would reject only when a run builds it:
    `http://host:port` or `https://host[:port]` (443 by default)."""
    shown = scrub_url(url)
    allowed = "allowed: http://host:port or https://host[:port], e.g. https://es.example.com:9200"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"{where}={shown!r} is not a URL; {allowed}") from None
    scheme = parts.scheme.lower()
    if "://" not in url or scheme not in ("http", "https"):
        what = f"has scheme {parts.scheme!r}" if "://" in url else "has no scheme"
        raise ValueError(f"{where}={shown!r} {what}; {allowed}")
    if not parts.hostname:
        raise ValueError(f"{where}={shown!r} has no host; {allowed}")
    if scheme == "http" and port is None:
        raise ValueError(f"{where}={shown!r} has no port (http has no default here); {allowed}")


@contextlib.contextmanager
def client_settings(block: str) -> Iterator[None]:
    """Build a client: a ValueError or TypeError there comes from the block's settings (a
    malformed URL, cloud id or option) and no retry will fix it, so it is terminal."""
    try:
        yield
    except LedgerflowError:
        raise
    except (ValueError, TypeError) as exc:
        raise ClientSettingsError(
            f"the {block} block's settings cannot build a client: {type(exc).__name__}: "
            f"{scrub_urls(str(exc))}; fix the block and save it again"
        ) from None  # chained, the client's own text (a URL's password) would be logged too
