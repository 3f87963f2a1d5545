"""What the model is given for one input file: a still (:class:`~invsr_cli.imaging.decode.LoadedImage`) or an
animation (:class:`~invsr_cli.imaging.animation.Animation`), reduced to ``max_input_side`` and checked against
``max_pixels`` from the header, before any pixel is decoded.

* :func:`probe_input` reads the header: the size as shown (EXIF orientation applied), the frame count, whether
  it is an animation.
* :func:`read_input` decodes it under the read-time settings: ``first_frame`` (an animation becomes its first
  frame, a still), ``max_input_side`` (inputs whose long side is larger are reduced by area averaging, alpha too),
  ``max_pixels`` (the model's input pixels, all frames counted).
* :func:`skip_reason` says why ``skip_if_larger`` leaves an input untouched, or None.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from invsr_cli.geometry.sizing import SizePlan, input_size, target_size

__all__ = ["InputInfo", "probe_input", "read_input", "skip_reason", "check_pixels", "plan_for", "check_container"]

_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


@dataclass(frozen=True)
class InputInfo:
    """``width``/``height`` as shown (after EXIF orientation); ``frames``: the frames the model will run (1 for
    a still, or for an animation with ``first_frame``); ``animated``: the file is an animation."""

    width: int
    height: int
    format: str
    frames: int
    animated: bool


def _is_animation(info: Any) -> bool:
    from invsr_cli.imaging.animation import ANIMATED_FORMATS

    return info.n_frames > 1 and info.format in ANIMATED_FORMATS


def _orientation(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format == "TIFF":  # Pillow already reports a TIFF's size oriented
                return 1
            return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1


def probe_input(path: str | os.PathLike[str], *, first_frame: bool = False) -> InputInfo:
    """The header of ``path`` (no pixels decoded). Raises ImageReadError as :func:`invsr_cli.imaging.decode.probe_image`."""
    from invsr_cli.imaging.decode import probe_image

    path = Path(path)
    info = probe_image(path)
    w, h = info.width, info.height
    animated = _is_animation(info)
    if not animated and _orientation(path) in _SWAPPING_ORIENTATIONS:
        w, h = h, w
    return InputInfo(w, h, info.format, info.n_frames if animated and not first_frame else 1, animated)


def check_pixels(path: Path, size: tuple[int, int], frames: int, max_pixels: int | None, what: str = "") -> None:
    """``max_pixels`` counts the model's input: all frames (and, for a second pass, its input)."""
    from invsr_cli.base.errors import ImageReadError
    from invsr_cli.base.paths import display_path
    from invsr_cli.imaging.decode import pixel_count

    w, h = size
    total = w * h * frames
    if max_pixels is None or total <= max_pixels:
        return
    lead = f"{what}{frames} frames of {w}x{h}" if frames > 1 else f"{what}{w}x{h}"
    raise ImageReadError(f"{display_path(path)}: {lead} = {pixel_count(total)} exceeds --max-pixels "
                         f"{pixel_count(max_pixels)}")


def plan_for(path: Path, w: int, h: int, frames: int, settings: Any, read_settings: Any) -> SizePlan:
    """An image's :class:`SizePlan` (``settings``: its own; ``read_settings``: the run's read-time keys), with the
    per-image checks: more than x16 is refused, a second pass's input counts against ``max_pixels``."""
    from invsr_cli.base.errors import InputError
    from invsr_cli.base.paths import display_path

    plan = target_size(w, h, replace(settings, max_input_side=read_settings.max_input_side))
    if plan.passes > settings.passes:
        more = "is above x16, more than two passes give" if plan.passes > 2 else "needs --passes 2"
        raise InputError(f"{display_path(path)}: the target {plan.describe()} {more}")
    if plan.second_input is not None:
        check_pixels(path, plan.second_input, frames, read_settings.max_pixels, "the second pass's input: ")
    return plan


def check_container(job: Any, frames: int) -> None:
    """An animation whose output format cannot hold one fails before any compute (InputError, naming the file)."""
    from invsr_cli.base.errors import InputError
    from invsr_cli.base.paths import display_path
    from invsr_cli.imaging.animation import ANIMATION_WRITE_FORMATS

    if frames > 1 and job.format not in ANIMATION_WRITE_FORMATS:
        raise InputError(f"{display_path(job.input)}: an animation of {frames} frames, and {job.format} cannot "
                         "hold an animation; write it as gif, png or webp (--format), or upscale the first frame "
                         "only (--first-frame)")


def skip_reason(info: InputInfo, settings: Any) -> str | None:
    """Why ``--skip-if-larger`` leaves this input untouched, or None."""
    n = settings.skip_if_larger
    side = max(info.width, info.height)
    if n is not None and side >= n:
        return f"long side {side} px is at least --skip-if-larger {n}"
    return None


def read_input(path: str | os.PathLike[str], settings: Any) -> tuple[Any, tuple[int, int]]:
    """Decode ``path`` for the model under the read-time ``settings``; returns (the still or animation, its size
    as shown before any reduction)."""
    from invsr_cli.imaging.decode import probe_image, read_image

    path = Path(path)
    if settings.max_input_side is None and not _is_animation(probe_image(path)):
        loaded = read_image(path, max_pixels=settings.max_pixels)  # the still path, as it always was
        return loaded, (loaded.width, loaded.height)
    info = probe_input(path, first_frame=settings.first_frame)
    source = (info.width, info.height)
    size = input_size(info.width, info.height, settings.max_input_side)
    check_pixels(path, size, info.frames, settings.max_pixels)
    if info.animated:
        from invsr_cli.imaging.animation import read_animation, resize_animation

        anim = read_animation(path, first_only=settings.first_frame)
        source = (anim.width, anim.height)
        size = input_size(anim.width, anim.height, settings.max_input_side)
        loaded: Any = anim if not settings.first_frame else _still(anim)
        if size != source:
            loaded = resize_animation(anim, size) if not settings.first_frame else _reduce(loaded, size)
        return loaded, source
    loaded = read_image(path, max_pixels=None)
    source = (loaded.width, loaded.height)
    size = input_size(loaded.width, loaded.height, settings.max_input_side)
    return _reduce(loaded, size), source


def _still(anim: Any) -> Any:
    from invsr_cli.imaging.decode import LoadedImage

    return LoadedImage(path=anim.path, rgb=anim.frames[0], alpha=anim.alpha, grayscale=False, bit_depth=8,
                       format=anim.format, icc=None, exif=None, width=anim.width, height=anim.height, mode=anim.mode)


def _reduce(loaded: Any, size: tuple[int, int]) -> Any:
    """A still reduced to ``size`` (area averaging, alpha too); unchanged when it is that size already."""
    from invsr_cli.imaging.encode import resize_rgb, upscale_alpha

    if size == (loaded.width, loaded.height):
        return loaded
    alpha = None if loaded.alpha is None else upscale_alpha(loaded.alpha, size)
    return replace(loaded, rgb=resize_rgb(loaded.rgb, size), alpha=alpha, width=size[0], height=size[1])
