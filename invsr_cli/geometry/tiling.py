"""Tile plans, padding, blend weights and accumulation: pure numpy, never torch, no I/O.

A :class:`TilePlan` is made in LR pixels by :func:`plan_tiles`. Padding rules, per side (as the authors do):

* a side shorter than the tile is reflect-padded *symmetrically* up to the tile size (centred; an odd extra
  pixel goes to the end, i.e. bottom/right);
* a side at least one tile long but not a multiple of ``multiple`` (16) is reflect-padded at the end up to the
  next multiple;
* otherwise it is not padded.

Tile starts along a padded side of length ``n`` are ``0, s, 2s, ...`` (``s = tile - overlap``, the stride) for
every ``start < n``; a start whose tile would cross the border is moved back to ``n - tile`` (flush), and
duplicates are dropped. With ``tile=128, overlap=64`` this is exactly the official InvSR scheme
(``ImageSpliterTh.extract_starts``). Tiles are ordered row-major: top row first, left to right.

The HR result of tile ``(y0, x0)`` covers ``[y0*scale, (y0+tile)*scale)`` x ``[x0*scale, (x0+tile)*scale)`` of the
padded HR image; :class:`BlendAccumulator` adds the weighted tile outputs there, normalises by the summed
weights and crops the padding away (:func:`crop_hr`).

Array types: the accumulator only needs slicing, ``*``, ``/`` and in-place ``+=`` (plus a ``zeros`` factory), so
the runner can accumulate float32 torch tensors on the device while the tests use numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from invsr_cli.base.errors import ConfigError

__all__ = [
    "TilePlan",
    "plan_tiles",
    "tile_starts",
    "pad_image",
    "blend_weights",
    "gaussian_kernel_1d",
    "crop_hr",
    "BlendAccumulator",
    "BLEND_MODES",
    "max_overlap",
    "BlendMode",
]

BlendMode = Literal["gaussian", "linear"]
BLEND_MODES: tuple[str, ...] = ("gaussian", "linear")

SCALE = 4


@dataclass(frozen=True)
class TilePlan:
    """How one LR image of ``lr_height`` x ``lr_width`` is padded and cut into ``tile`` x ``tile`` tiles.

    ``pad`` is ``(top, bottom, left, right)`` in LR pixels; ``tiles`` holds the ``(y0, x0)`` start of each tile in
    padded-LR coordinates, row-major. ``scale`` is the model's factor (4): HR tile side ``hr_tile = tile*scale``.
    """

    lr_height: int
    lr_width: int
    padded_height: int
    padded_width: int
    pad: tuple[int, int, int, int]
    tile: int
    overlap: int
    scale: int
    tiles: tuple[tuple[int, int], ...]

    @property
    def single(self) -> bool:
        """Exactly one tile, covering the whole padded image (no blending needed)."""
        return len(self.tiles) == 1 and self.padded_height == self.tile and self.padded_width == self.tile

    @property
    def n_tiles(self) -> int:
        return len(self.tiles)

    @property
    def hr_tile(self) -> int:
        return self.tile * self.scale

    @property
    def hr_padded_shape(self) -> tuple[int, int]:
        """(H, W) of the padded HR canvas."""
        return self.padded_height * self.scale, self.padded_width * self.scale

    def lr_slices(self, index: int) -> tuple[slice, slice]:
        """(rows, cols) of tile ``index`` in the padded LR image."""
        y0, x0 = self.tiles[index]
        return slice(y0, y0 + self.tile), slice(x0, x0 + self.tile)

    def hr_slices(self, index: int) -> tuple[slice, slice]:
        """(rows, cols) of tile ``index``'s output in the padded HR canvas."""
        y0, x0 = self.tiles[index]
        k, s = self.hr_tile, self.scale
        return slice(y0 * s, y0 * s + k), slice(x0 * s, x0 * s + k)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"`{name}` must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"`{name}` must be >= {minimum}, got {value}")
    return int(value)


def max_overlap(tile: int) -> int:
    """The largest overlap allowed for ``tile``: half of it (the authors' setting, 64 of 128). More would cover
    every pixel by three tiles or more for no gain in seams."""
    return tile // 2


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one (already padded) side of ``length >= tile``: the authors' scheme."""
    if length < tile:
        raise ValueError(f"side {length} is shorter than the tile {tile}; pad it first")
    stride = tile - overlap
    starts: list[int] = []
    for start in range(0, length, stride):
        start = min(start, length - tile)
        if not starts or start != starts[-1]:  # starts never decrease, so a duplicate is the previous one
            starts.append(start)
    return starts


def _side_padding(n: int, tile: int, multiple: int) -> tuple[int, int]:
    if n < tile:
        total = tile - n
        before = total // 2
        return before, total - before
    return 0, (-n) % multiple


def plan_tiles(height: int, width: int, tile: int = 128, overlap: int = 32, multiple: int = 16) -> TilePlan:
    """Plan the padding and tiles of an LR image of ``height`` x ``width`` pixels (see the module docstring).

    Raises :class:`~invsr_cli.base.errors.ConfigError` when ``tile`` is not a positive multiple of ``multiple`` or
    ``overlap`` is not in ``[0, tile)``.
    """
    height = _check_int("height", height, 1)
    width = _check_int("width", width, 1)
    multiple = _check_int("multiple", multiple, 1)
    tile = _check_int("tile", tile, 1)
    overlap = _check_int("overlap", overlap, 0)
    if tile % multiple:
        raise ConfigError(f"`tile` must be a multiple of {multiple}, got {tile}")
    if overlap >= tile:
        raise ConfigError(f"`overlap` must be smaller than `tile` ({tile}), got {overlap}")

    top, bottom = _side_padding(height, tile, multiple)
    left, right = _side_padding(width, tile, multiple)
    ph, pw = height + top + bottom, width + left + right
    ys = tile_starts(ph, tile, overlap)
    xs = tile_starts(pw, tile, overlap)
    return TilePlan(
        lr_height=height,
        lr_width=width,
        padded_height=ph,
        padded_width=pw,
        pad=(top, bottom, left, right),
        tile=tile,
        overlap=overlap,
        scale=SCALE,
        tiles=tuple((y, x) for y in ys for x in xs),
    )


def pad_image(arr: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Reflect-pad an ``HxW`` or ``HxWxC`` array to the plan's padded size.

    Uses numpy's ``'reflect'`` mode (mirror without repeating the edge pixel, like torch's ``reflect``). When the
    pad is larger than the side, numpy keeps reflecting back and forth (a triangle wave over the row), so any pad
    works; a side of one pixel is repeated (numpy reflects a singleton into itself, i.e. ``'edge'``).
    """
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected an HxW or HxWxC array, got shape {arr.shape}")
    if tuple(arr.shape[:2]) != (plan.lr_height, plan.lr_width):
        raise ValueError(
            f"array is {arr.shape[0]}x{arr.shape[1]}, the plan is for {plan.lr_height}x{plan.lr_width}"
        )
    top, bottom, left, right = plan.pad
    if not any(plan.pad):
        return arr
    widths = [(top, bottom), (left, right)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, widths, mode="reflect")


def gaussian_kernel_1d(k: int) -> np.ndarray:
    """The authors' 1-D Gaussian over ``k`` pixels (float64), equal to OpenCV's ``getGaussianKernel``.

    sigma is OpenCV's default for that size, ``0.3*((k-1)*0.5-1)+0.8``; an odd ``k`` uses the ``k``-point kernel,
    an even ``k`` the ``(k+1)``-point kernel without its first element.
    """
    if k < 1:
        raise ValueError(f"kernel size must be positive, got {k}")
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    n = k + 1 if k % 2 == 0 else k
    x = np.arange(n, dtype=np.float64) - (n - 1) * 0.5
    g = np.exp(-0.5 / (sigma * sigma) * x * x)
    g /= g.sum()
    return g[1:] if k % 2 == 0 else g


def _linear_ramp_1d(k: int, ramp: int) -> np.ndarray:
    w = np.ones(k, dtype=np.float64)
    if ramp <= 0:
        return w
    i = np.arange(k, dtype=np.float64)
    rise = (i + 0.5) / ramp  # 0.5/ramp at the first pixel, > 1 from pixel `ramp` on
    return np.minimum(w, np.minimum(rise, rise[::-1]))


def blend_weights(plan: TilePlan, mode: BlendMode = "gaussian") -> np.ndarray:
    """One HR tile's blend weights, float32 ``(hr_tile, hr_tile)``, the same for every tile, never zero.

    * ``gaussian``: the outer product of two :func:`gaussian_kernel_1d` (the authors' weights).
    * ``linear``: a ramp over the HR overlap (``overlap*scale`` px) at each side of the tile, from
      ``0.5/(overlap*scale)`` up to 1, flat 1 inside; all ones when ``overlap == 0``.

    Weights need not sum to one: the accumulator divides by the summed weights.
    """
    k = plan.hr_tile
    if mode == "gaussian":
        g = gaussian_kernel_1d(k)
    elif mode == "linear":
        g = _linear_ramp_1d(k, plan.overlap * plan.scale)
    else:
        raise ConfigError(f"`blend` must be one of {', '.join(BLEND_MODES)}; got {mode!r}")
    return np.outer(g, g).astype(np.float32)


def crop_hr(plan: TilePlan) -> tuple[slice, slice]:
    """(rows, cols) of the un-padded image in the padded HR canvas."""
    top, _, left, _ = plan.pad
    s = plan.scale
    return slice(top * s, (top + plan.lr_height) * s), slice(left * s, (left + plan.lr_width) * s)


def _numpy_zeros(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


class BlendAccumulator:
    """Accumulates weighted HR tile outputs of one image, channel-first, and returns the blended result.

    The blend weights are one tile's ``(k, k)`` array: either passed as ``weights`` (already in the array type and
    device of the tile outputs, e.g. ``torch.from_numpy(blend_weights(plan)).to(device)``), or computed here from
    ``mode`` (:func:`blend_weights`) and converted with ``asarray`` (e.g.
    ``lambda a: torch.as_tensor(a, device=device)``; default: kept as numpy). ``zeros(shape)`` makes a float32
    zero array of that shape (default: numpy). Each tile of the plan must be added exactly once, as ``(C, k, k)``.

    A single-tile plan skips weighting altogether: :meth:`result` is the tile output, cropped, bit for bit.
    """

    def __init__(
        self,
        plan: TilePlan,
        weights: Any = None,
        *,
        mode: BlendMode = "gaussian",
        channels: int = 3,
        zeros: Callable[[tuple[int, ...]], Any] = _numpy_zeros,
        asarray: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        k = plan.hr_tile
        if weights is None:
            weights = blend_weights(plan, mode)
            if asarray is not None:
                weights = asarray(weights)
        if tuple(weights.shape) != (k, k):
            raise ValueError(f"weights must be {k}x{k}, got {tuple(weights.shape)}")
        self.plan = plan
        self.weights = weights
        self.channels = channels
        self._added: set[int] = set()
        self._single: Any = None
        if plan.single:
            self._acc = self._wsum = None
        else:
            hh, ww = plan.hr_padded_shape
            self._acc = zeros((channels, hh, ww))
            self._wsum = zeros((1, hh, ww))

    @property
    def complete(self) -> bool:
        return len(self._added) == self.plan.n_tiles

    def add(self, index: int, tile_out: Any) -> None:
        """Add the ``(C, k, k)`` output of tile ``index``."""
        k = self.plan.hr_tile
        if not 0 <= index < self.plan.n_tiles:
            raise IndexError(f"tile index {index} out of range (plan has {self.plan.n_tiles} tiles)")
        if index in self._added:
            raise ValueError(f"tile {index} was already added")
        if tuple(tile_out.shape) != (self.channels, k, k):
            raise ValueError(f"tile output must be ({self.channels}, {k}, {k}), got {tuple(tile_out.shape)}")
        if self._acc is None:
            self._single = tile_out
        else:
            rows, cols = self.plan.hr_slices(index)
            self._acc[:, rows, cols] += tile_out * self.weights
            self._wsum[:, rows, cols] += self.weights
        self._added.add(index)

    def result(self) -> Any:
        """The blended, un-padded ``(C, scale*lr_height, scale*lr_width)`` result."""
        if not self.complete:
            missing = sorted(set(range(self.plan.n_tiles)) - self._added)
            raise RuntimeError(
                f"{len(missing)} of {self.plan.n_tiles} tiles were never added (first: {missing[0]})"
            )
        rows, cols = crop_hr(self.plan)
        if self._acc is None:
            return self._single[:, rows, cols]
        return self._acc[:, rows, cols] / self._wsum[:, rows, cols]
