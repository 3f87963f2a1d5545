"""Runner policies that are pure arithmetic."""

from __future__ import annotations


def test_auto_batch_fits_measured_memory_with_margin():
    from invsr_cli.work.process import MAX_AUTO_BATCH, fit_batch

    gib = 2**30
    assert fit_batch(10 * gib, 1 * gib) == 8  # 80% of 10 GiB at 1 GiB a tile
    assert fit_batch(10 * gib, 3 * gib) == 2
    assert fit_batch(1 * gib, 3 * gib) == 1  # never below one (the OOM retry takes over from there)
    assert fit_batch(500 * gib, 1 * gib) == MAX_AUTO_BATCH
