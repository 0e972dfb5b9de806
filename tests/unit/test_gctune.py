"""The collector is tuned while extractions run and restored when the last one ends."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

from ledgerflow import gctune

ROOT = Path(__file__).resolve().parents[2]


def test_nested_and_overlapping_uses_restore_the_settings_once_at_the_end() -> None:
    before = gc.get_threshold()
    with gctune.for_bulk_json():
        tuned = gc.get_threshold()
        assert tuned[0] >= gctune.BULK_THRESHOLD
        assert gc.get_freeze_count() > 0
        with gctune.for_bulk_json():
            assert gc.get_threshold() == tuned
        assert gc.get_threshold() == tuned  # the outer extraction is still running
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_an_error_inside_still_restores() -> None:
    before = gc.get_threshold()
    try:
        with gctune.for_bulk_json():
            raise RuntimeError("extraction failed")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before


def test_quick_shutdown_finalizes_the_garbage_then_leaves_no_heap_to_walk() -> None:
    """A process that asked for a quick shutdown: a garbage cycle left at exit is still
    finalized (its __del__ runs), and when the interpreter tears down, everything still alive
    is frozen, out of the shutdown collections' sight. The check runs in an atexit handler
    registered first, so it runs last, as the interpreter's own shutdown follows."""
    program = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('FROZEN', gc.get_freeze_count() > 0))\n"
        "from ledgerflow import gctune\n"
        "gctune.quick_shutdown()\n"
        "gctune.quick_shutdown()  # once per process\n"
        "class Cycle:\n"
        "    def __del__(self):\n"
        "        print('FINALIZED', flush=True)\n"
        "c = Cycle(); c.me = c; del c\n"
        "gc.disable()  # only the exit's own collection can find it\n"
        "print('HANDLERS', atexit._ncallbacks())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert done.stdout.split() == ["HANDLERS", "2", "FINALIZED", "FROZEN", "True"], done
