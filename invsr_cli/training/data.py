"""Training pairs: random crops and flips of the user's HR images, the Real-ESRGAN training-profile degradations
(:mod:`invsr_cli.quality.degrade`), and the authors' pair pool (TRAINING.md sections 2-3).

All randomness comes from one numpy generator whose state, with the epoch order and position, is part of a
checkpoint, so a resumed run draws exactly the pairs an uninterrupted one would have drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from invsr_cli.base.errors import InputError

__all__ = ["PairSource", "PairPool", "IMAGE_SUFFIXES", "expand_inputs"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, folders walked recursively (image suffixes only), sorted, duplicates dropped."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{item}: no such file or folder")
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


class PairSource:
    """Endless (LR, HR) crops: ``crop`` x ``crop`` HR (reflect-101 padded when a side is smaller), flipped with
    p 0.5, degraded to ``crop/4``. Unreadable files are skipped and reported once through ``warn``."""

    def __init__(self, paths: list[Path], crop: int, seed: int, warn: Any = None) -> None:
        if crop <= 0 or crop % 32:
            raise InputError(f"--crop must be a positive multiple of 32, got {crop}")
        self.paths, self.crop = list(paths), crop
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []
        self.pos = 0
        self.bad: set[int] = set()
        self.padded_said = False
        self.warn = warn or (lambda msg: None)

    def state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "order": list(self.order), "pos": self.pos,
                "bad": sorted(self.bad)}

    def load_state(self, st: dict[str, Any]) -> None:
        self.rng.bit_generator.state = st["rng"]
        self.order, self.pos, self.bad = list(st["order"]), int(st["pos"]), set(st["bad"])

    def _read(self, i: int) -> np.ndarray | None:
        from invsr_cli.imaging.decode import read_image
        from invsr_cli.quality.degrade import to_rgb8

        try:
            img = read_image(self.paths[i])
            return to_rgb8(img.rgb, getattr(img, "alpha", None))
        except Exception as exc:  # noqa: BLE001 - a corrupt training image is skipped, never a crash
            self.bad.add(i)
            self.warn(f"{self.paths[i]}: skipped ({exc})")
            return None

    def next_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        from invsr_cli.quality.degrade import degrade

        for _ in range(2 * len(self.paths) + 2):
            if self.pos >= len(self.order):
                self.order = [int(i) for i in self.rng.permutation(len(self.paths)) if int(i) not in self.bad]
                self.pos = 0
                if not self.order:
                    break
            i = self.order[self.pos]
            self.pos += 1
            hr = self._read(i)
            if hr is None:
                continue
            hr = self._crop(hr)
            lr, _ = degrade(hr, "training", self.rng)
            to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0  # noqa: E731
            return to_t(lr), to_t(hr)
        raise InputError("no readable training image left (every input was skipped)")

    def _crop(self, hr: np.ndarray) -> np.ndarray:
        c = self.crop
        h, w = hr.shape[:2]
        if h < c or w < c:
            if not self.padded_said:
                self.warn(f"images smaller than --crop {c} are reflect-padded (as the authors do)")
                self.padded_said = True
            hr = np.pad(hr, ((0, max(0, c - h)), (0, max(0, c - w)), (0, 0)), mode="reflect")
            h, w = hr.shape[:2]
        y = int(self.rng.integers(0, h - c + 1))
        x = int(self.rng.integers(0, w - c + 1))
        hr = hr[y : y + c, x : x + c]
        if self.rng.random() < 0.5:
            hr = hr[:, ::-1]
        return hr


class PairPool:
    """The authors' pool of ``10 * b`` (LR, GT latent) pairs: while filling, a fresh batch is used as is; once full,
    each iteration shuffles the pool, takes the first ``b`` out for training and puts the fresh batch there."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lq: list[torch.Tensor] = []
        self.gt: list[torch.Tensor] = []

    def exchange(self, lq: torch.Tensor, gt: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.lq) + lq.shape[0] <= self.capacity:
            self.lq.extend(lq.unbind(0))
            self.gt.extend(gt.unbind(0))
            return lq, gt
        perm = torch.randperm(len(self.lq), generator=gen).tolist()
        self.lq = [self.lq[i] for i in perm]
        self.gt = [self.gt[i] for i in perm]
        b = lq.shape[0]
        out_lq, out_gt = torch.stack(self.lq[:b]), torch.stack(self.gt[:b])
        self.lq[:b], self.gt[:b] = list(lq.unbind(0)), list(gt.unbind(0))
        return out_lq, out_gt

    def state(self) -> dict[str, Any]:
        return {"lq": [t.clone() for t in self.lq], "gt": [t.clone() for t in self.gt]}

    def load_state(self, st: dict[str, Any]) -> None:
        self.lq, self.gt = list(st["lq"]), list(st["gt"])
