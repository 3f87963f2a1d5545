"""Small test images of every kind invsr must handle, made with Pillow (no files shipped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _pattern(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), (xx + yy) / max(w + h - 2, 1)], -1)
    return np.clip(base * 200 + rng.normal(0, 12, (h, w, 3)) + 20, 0, 255).astype(np.uint8)


def rgb(path: Path, w: int = 32, h: int = 24, seed: int = 0, **save: object) -> Path:
    Image.fromarray(_pattern(w, h, seed)).save(path, **save)
    return path


def rgba(path: Path, w: int = 32, h: int = 32) -> Path:
    a = np.zeros((h, w), np.uint8)
    a[:, w // 2:] = 255
    Image.fromarray(np.dstack([_pattern(w, h, 1), a])).save(path)
    return path


def gray(path: Path, w: int = 20, h: int = 28) -> Path:
    Image.fromarray(_pattern(w, h, 2)[..., 0]).save(path)
    return path


def gray16(path: Path, w: int = 24, h: int = 16) -> Path:
    arr = (_pattern(w, h, 3)[..., 1].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(arr).save(path)  # mode I;16
    return path


def exif_rotated_jpeg(path: Path, w: int = 32, h: int = 16, orientation: int = 6) -> Path:
    """A JPEG stored w x h with an EXIF Orientation tag: 6 means 'rotate 90 CW to view', so it displays h x w."""
    img = Image.fromarray(_pattern(w, h, 4))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes(), quality=95)
    return path
