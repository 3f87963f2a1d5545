"""Torch's intra-op thread count changes the order of float reductions on a CPU, and so the last bit of some
results (a few 8-bit values by one level). An executor's CPU worker computes with its share of the cores; a
byte-for-byte comparison with a run in this process must compute with the same number of threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
