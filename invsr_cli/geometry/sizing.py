"""Output sizes: what each image becomes, decided by one pure function, :func:`target_size`.

The model always enlarges x4 (``NATIVE``). A target is asked for in one of six exclusive ways (settings keys):
``scale`` (a factor, at most 4), ``width`` or ``height`` (the other side follows the aspect ratio), ``fit`` (the
largest size inside a box, aspect ratio kept), ``long_side`` or ``short_side``. A target of at most x4 is the x4
result resized down (area averaging, :func:`invsr_cli.imaging.encode.resize_rgb`); a larger one needs a second pass
(``passes: 2``): the x4 result is reduced (area averaging) to a quarter of the target, rounded up, upscaled x4
again, and that resized down to the target. Above x16 no number of passes helps: refused.

Before any of that, ``max_input_side`` reduces an input whose long side is larger (area averaging): the model
works best on small, degraded inputs. ``scale`` then counts from the reduced input; the absolute targets do not
depend on it: their free side follows the original image's aspect ratio, not the rounded reduced one.

Every computation is integer arithmetic (round half up), so a side asked for is exact and a box is never
exceeded; the other side is the exact aspect ratio rounded to the nearest pixel, at least 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["NATIVE", "MAX_PASSES", "SIZE_KEYS", "SizePlan", "target_size", "input_size", "parse_box",
           "scaled_size"]

NATIVE = 4  # the model's factor
MAX_PASSES = 2
# The ways to ask for an output size: at most one per settings layer (`scale` is the default one).
SIZE_KEYS: tuple[str, ...] = ("scale", "width", "height", "fit", "long_side", "short_side")


@dataclass(frozen=True)
class SizePlan:
    """One image's sizes. ``input``: what the model is given (after ``max_input_side``); ``output``: the file
    written; ``passes``: model passes the target needs (1 or 2; 3 means above x16, refused); ``factor``: output
    over input, the larger of the two sides' ratios; ``second_input``: the second pass's input, or None."""

    source: tuple[int, int]
    input: tuple[int, int]
    output: tuple[int, int]
    passes: int
    factor: float
    second_input: tuple[int, int] | None = None

    @property
    def allowed(self) -> bool:
        return self.passes <= MAX_PASSES

    def describe(self) -> str:
        """E.g. ``x6.25 (128x96 -> 800x600)``, for messages."""
        (iw, ih), (ow, oh) = self.input, self.output
        return f"x{self.factor:.4g} ({iw}x{ih} -> {ow}x{oh})"


def _scaled(a: int, num: int, den: int) -> int:
    """round(a * num / den), half up, at least 1: exact integers, no float error."""
    return max(1, (2 * a * num + den) // (2 * den))


def parse_box(value: Any) -> tuple[int, int]:
    """``"1920x1080"`` (or a 2-sequence) -> (1920, 1080); ValueError naming the expected form otherwise."""
    if isinstance(value, str):
        parts = value.lower().replace("×", "x").split("x")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = []
    try:
        if len(parts) != 2 or any(isinstance(p, bool) for p in parts):
            raise ValueError
        w, h = (int(str(p).strip()) for p in parts)
    except ValueError:
        raise ValueError(f"must be WIDTHxHEIGHT like 1920x1080, got {value!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"must be WIDTHxHEIGHT with both at least 1, got {value!r}")
    return w, h


def scaled_size(w: int, h: int, scale: float) -> tuple[int, int]:
    """``--scale``: each side times ``scale``, rounded (the rule invsr always had: outputs stay bit-identical)."""
    return max(1, round(w * scale)), max(1, round(h * scale))


def input_size(w: int, h: int, max_input_side: int | None) -> tuple[int, int]:
    """The model's input size: ``(w, h)``, or reduced so its long side is ``max_input_side``."""
    if not max_input_side or max(w, h) <= max_input_side:
        return w, h
    if w >= h:
        return max_input_side, _scaled(h, max_input_side, w)
    return _scaled(w, max_input_side, h), max_input_side


def _output(w: int, h: int, iw: int, ih: int, s: Any) -> tuple[int, int]:
    """The output size: an absolute target from the original ``w`` x ``h`` (its exact aspect ratio, never that of
    the rounded, reduced input); ``scale`` from the model's input ``iw`` x ``ih``."""
    if s.width is not None:
        return s.width, _scaled(h, s.width, w)
    if s.height is not None:
        return _scaled(w, s.height, h), s.height
    if s.fit is not None:
        bw, bh = s.fit
        if bw * h <= bh * w:  # the width binds
            return bw, min(bh, _scaled(h, bw, w))
        return min(bw, _scaled(w, bh, h)), bh
    if s.long_side is not None:
        n = s.long_side
        return (n, _scaled(h, n, w)) if w >= h else (_scaled(w, n, h), n)
    if s.short_side is not None:
        n = s.short_side
        return (n, _scaled(h, n, w)) if w <= h else (_scaled(w, n, h), n)
    return scaled_size(iw, ih, s.scale)


def target_size(w: int, h: int, settings: Any) -> SizePlan:
    """The sizes of an image whose (oriented) size is ``w`` x ``h``, under ``settings`` (a
    :class:`~invsr_cli.settings.settings.Settings`, or anything with its size keys and ``max_input_side``). Pure."""
    if w < 1 or h < 1:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    iw, ih = input_size(w, h, getattr(settings, "max_input_side", None))
    ow, oh = _output(w, h, iw, ih, settings)
    factor = max(ow / iw, oh / ih)
    passes = 1
    reach = NATIVE
    while ow > reach * iw or oh > reach * ih:  # exact: integers
        passes += 1
        reach *= NATIVE
        if passes > MAX_PASSES:
            break
    second = None
    if passes == 2:
        second = (math.ceil(ow / NATIVE), math.ceil(oh / NATIVE))
    return SizePlan((w, h), (iw, ih), (ow, oh), passes, factor, second)
