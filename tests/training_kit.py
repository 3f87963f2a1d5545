"""Helpers of the training tests: a folder of small random HR images and TrainOptions on the tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from invsr_cli.quality.lpips import HEADS_FILE, VGG_FILE, expected_keys
from invsr_cli.training.run import TrainOptions


def images(folder: Path, n: int = 3, size: tuple[int, int] = (80, 72), seed: int = 0) -> Path:
    """``n`` random RGB PNGs of about ``size`` (h, w; each a little taller than the last)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 256, (size[0] + 8 * i, size[1], 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.png")
    return folder


def options(tiny_models, data: Path, out: Path, **kw) -> TrainOptions:
    """A tiny run: 64 px crops, batch 2 in micro-batches of 1, no GAN or LPIPS term, a checkpoint every 2."""
    base = dict(inputs=(str(data),), out=str(out), sd_model=str(tiny_models.sd_dir),
                init=str(tiny_models.noise_predictor_path), iterations=2, batch=2, microbatch=1, crop=64,
                lr=1e-4, warmup=2, no_gan=True, no_lpips=True, save_every=2, seed=5)
    base.update(kw)
    return TrainOptions(**base)


def lpips_home(root: Path) -> Path:
    """A TORCH_HOME whose hub cache holds random-weight LPIPS-VGG files under the real names (the real loader)."""
    folder = root / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    vgg, heads = expected_keys()
    torch.save({k: torch.randn(s, generator=g) * 0.05 for k, s in vgg.items()}, folder / VGG_FILE)
    torch.save({k: torch.rand(s, generator=g) for k, s in heads.items()}, folder / HEADS_FILE)
    return root
