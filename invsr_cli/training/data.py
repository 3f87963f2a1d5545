"""Training pairs: random crops and flips of the user's HR images, the Real-ESRGAN training-profile degradations
(:mod:`invsr_cli.quality.degrade`), and the authors' pair pool (TRAINING.md sections 2-3).

Every sample is a pure function of the seed and its global index (no stream state), so a resumed run draws exactly
the pairs an uninterrupted one would have drawn, and N processes draw the pairs one process would, each its slice.
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
    """(LR, HR) crops by *global sample index*: ``crop`` x ``crop`` HR (reflect-101 padded when a side is smaller),
    flipped with p 0.5, degraded to ``crop/4``. Unreadable files are skipped and reported once through ``warn``.

    Sample ``g`` is a pure function of (``seed``, ``g``, the files): epoch ``g // n`` visits the images in a
    permutation drawn from ``(seed, epoch)``, and the crop, flip and degradations of sample ``g`` come from a
    generator seeded with ``(seed, g)``; an unreadable image gives way to the next readable one of the permutation.
    So every process of a run makes exactly its own slice of a global batch, and the data position is one number
    (the next global index), the same whatever the process count."""

    def __init__(self, paths: list[Path], crop: int, seed: int, warn: Any = None) -> None:
        if crop <= 0 or crop % 32:
            raise InputError(f"--crop must be a positive multiple of 32, got {crop}")
        self.paths, self.crop, self.seed = list(paths), crop, int(seed)
        self.next = 0  # the next global sample index (the loop advances it by the global batch)
        self.bad: set[int] = set()
        self.padded_said = False
        self.warn = warn or (lambda msg: None)
        self._perm: tuple[int, list[int]] = (-1, [])

    def state(self) -> dict[str, Any]:
        return {"seed": self.seed, "next": self.next, "bad": sorted(self.bad)}

    def load_state(self, st: dict[str, Any]) -> None:
        if "next" not in st:
            raise InputError("the checkpoint's data position is of an older layout (a per-process stream); "
                             "start a new run to train with this version")
        self.seed, self.next, self.bad = int(st["seed"]), int(st["next"]), set(st["bad"])
        self._perm = (-1, [])

    def _order(self, epoch: int) -> list[int]:
        if self._perm[0] != epoch:
            self._perm = (epoch, [int(i) for i in np.random.default_rng([self.seed, 0, epoch]).permutation(
                len(self.paths))])
        return self._perm[1]

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

    def pair(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``g``: LR (3, crop/4, crop/4) and HR (3, crop, crop) float32 in [0, 1]."""
        from invsr_cli.quality.degrade import degrade

        n = len(self.paths)
        if n:
            epoch, pos = divmod(g, n)
            order = self._order(epoch)
            for step in range(n):
                i = order[(pos + step) % n]
                if i in self.bad:
                    continue
                hr = self._read(i)
                if hr is None:
                    continue
                rng = np.random.default_rng([self.seed, 1, g])
                hr = self._crop(hr, rng)
                lr, _ = degrade(hr, "training", rng)
                to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0  # noqa: E731
                return to_t(lr), to_t(hr)
        raise InputError("no readable training image left (every input was skipped)")

    def next_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair at the data position, which then moves on by one."""
        out = self.pair(self.next)
        self.next += 1
        return out

    def _crop(self, hr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.crop
        h, w = hr.shape[:2]
        if h < c or w < c:
            if not self.padded_said:
                self.warn(f"images smaller than --crop {c} are reflect-padded (as the authors do)")
                self.padded_said = True
            hr = np.pad(hr, ((0, max(0, c - h)), (0, max(0, c - w)), (0, 0)), mode="reflect")
            h, w = hr.shape[:2]
        y = int(rng.integers(0, h - c + 1))
        x = int(rng.integers(0, w - c + 1))
        hr = hr[y : y + c, x : x + c]
        if rng.random() < 0.5:
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
