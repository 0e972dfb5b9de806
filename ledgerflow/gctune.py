"""Garbage-collector settings for the JSON-heavy hot path (Elasticsearch extraction).

Decoding a page of 1,000 documents allocates tens of thousands of dicts and strings, so the
cyclic collector runs constantly, and each full collection walks every object the process holds:
Prefect, pydantic and the clients are over a million. While an extraction runs, `for_bulk_json`
moves what already exists out of the collector's sight (`gc.freeze`) and collects less often.
Measured on 200,000 documents from osmem-server: 44,000 -> 70,000 docs/s, CPU 4.5 -> 2.9 s.
Nothing else changes: reference counting still frees every page as soon as it is dropped, and
the previous settings come back when the last extraction in the process ends.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_active = 0
_saved: tuple[int, int, int] | None = None
BULK_THRESHOLD = 50_000  # allocations between young collections (CPython's default is 700)


@contextlib.contextmanager
def for_bulk_json() -> Iterator[None]:
    """Tune the collector while the block runs; nests and overlaps across tasks and threads."""
    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(_saved[0], BULK_THRESHOLD), _saved[1], _saved[2])
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                gc.unfreeze()
                _saved = None
