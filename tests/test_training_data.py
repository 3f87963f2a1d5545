"""The training data path: crops, reflect padding, corrupt files skipped, the authors' pair pool, data state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from invsr_cli.base.errors import InputError
from invsr_cli.training.data import PairPool, PairSource, expand_inputs


def test_pool_fills_then_exchanges():
    pool = PairPool(4)
    g = torch.Generator().manual_seed(0)
    for k in range(2):
        lq, gt = pool.exchange(torch.full((2, 1), float(k)), torch.full((2, 1), float(k)), g)
        assert torch.equal(lq, torch.full((2, 1), float(k)))  # used as is while filling
    lq, gt = pool.exchange(torch.full((2, 1), 9.0), torch.full((2, 1), 9.0), g)
    assert torch.equal(lq, gt) and 9.0 not in lq  # two old pairs out, lq and gt stay paired
    held = sorted(float(t) for t in pool.lq)
    assert len(held) == 4 and held.count(9.0) == 2


def test_source_pads_skips_and_resumes(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "bad.png").write_bytes(b"junk")
    said: list[str] = []
    src = PairSource(expand_inputs([str(tmp_path)]), 64, seed=3, warn=said.append)
    lr, hr = src.next_pair()
    lr2, hr2 = src.next_pair()
    assert hr.shape == (3, 64, 64) and lr.shape == (3, 16, 16) and 0 <= float(lr.min()) <= float(lr.max()) <= 1
    assert any("reflect-padded" in m for m in said) and any("bad.png" in m and "skipped" in m for m in said)
    state = src.state()
    a = src.next_pair()
    other = PairSource(expand_inputs([str(tmp_path)]), 64, seed=99)
    other.load_state(state)
    b = other.next_pair()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_source_refuses_bad_crop_and_no_images(tmp_path):
    with pytest.raises(InputError, match="multiple of 32"):
        PairSource([], 50, seed=0)
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(InputError, match="no readable training image"):
        PairSource(expand_inputs([str(tmp_path)]), 64, seed=0).next_pair()
