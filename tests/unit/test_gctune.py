"""The collector is tuned while extractions run and restored when the last one ends."""

from __future__ import annotations

import gc

from ledgerflow import gctune


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
