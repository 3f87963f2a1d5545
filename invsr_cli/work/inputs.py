"""What the model is given for one input file: a still (:class:`~invsr_cli.imaging.decode.LoadedImage`) or an
animation (:class:`~invsr_cli.imaging.animation.Animation`), reduced to ``max_input_side`` and checked against
``max_pixels`` from the header, before any pixel is decoded.

* :func:`probe_input` reads the header once: the size as shown (EXIF orientation applied), the frame count,
  the orientation, the format. The driver probes each input once (:func:`probe_inputs`) and carries the
  :class:`InputInfo` in its task; the size refusal, ``skip_if_larger``, the dry run, the largest-first order of
  ``--devices`` and the read itself all use it.
* :func:`read_input` decodes it under the run's read-time settings: ``first_frame`` (an animation becomes its
  first frame, a still), ``max_input_side`` (inputs whose long side is larger are reduced by area averaging, alpha
  too), ``max_pixels`` (the model's input pixels, all frames counted).
* :func:`plan_image` is an image's plan, its sizes and the tiles of each pass, for processing and the dry run alike.
* :func:`skip_reason` says why ``skip_if_larger`` leaves an input untouched, or None.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from invsr_cli.geometry.sizing import SizePlan, input_size, target_size

__all__ = ["InputInfo", "ImagePlan", "probe_input", "probe_inputs", "read_input", "skip_reason", "check_pixels",
           "plan_for", "plan_image", "tile_plan", "check_container", "count_tiles", "check_tiles", "is_animation",
           "reduce_still"]

_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


@dataclass(frozen=True)
class InputInfo:
    """``width``/``height`` as shown (after EXIF orientation); ``frames``: the frames the model will run (1 for
    a still, or for an animation with ``first_frame``); ``animated``: the file is an animation; ``orientation``:
    the EXIF orientation applied to the size (1: none)."""

    width: int
    height: int
    format: str
    frames: int
    animated: bool
    orientation: int = 1


def is_animation(info: Any) -> bool:
    """The header (:func:`invsr_cli.imaging.decode.probe_image`) is an animation invsr reads frame by frame."""
    from invsr_cli.imaging.animation import ANIMATED_FORMATS

    return info.n_frames > 1 and info.format in ANIMATED_FORMATS


def probe_input(path: str | os.PathLike[str], *, first_frame: bool = False) -> InputInfo:
    """The header of ``path``, opened once (no pixels decoded). Raises ImageReadError as
    :func:`invsr_cli.imaging.decode.probe_image`."""
    from invsr_cli.imaging.decode import probe_image

    info = probe_image(Path(path))
    w, h = info.width, info.height
    animated = is_animation(info)
    orientation = 1 if animated else info.orientation
    if orientation in _SWAPPING_ORIENTATIONS:
        w, h = h, w
    return InputInfo(w, h, info.format, info.n_frames if animated and not first_frame else 1, animated, orientation)


def probe_inputs(paths: Iterable[str | os.PathLike[str]], *, first_frame: bool = False) -> list[InputInfo | None]:
    """:func:`probe_input` of each path, in order; ``None`` for one whose header cannot be read (it fails, with its
    reason, when it is read)."""
    infos: list[InputInfo | None] = []
    for path in paths:
        try:
            infos.append(probe_input(path, first_frame=first_frame))
        except Exception:  # InvSRError, or a library bug on one hostile header: the read reports it
            infos.append(None)
    return infos


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


def plan_for(path: Path, w: int, h: int, frames: int, image: Any, run: Any) -> SizePlan:
    """An image's :class:`SizePlan` (``image``: its own settings; ``run``: the run's, for ``max_input_side`` and
    ``max_pixels``), with the per-image checks: more than x16 is refused, a second pass's input counts against
    ``max_pixels``."""
    from invsr_cli.base.errors import InputError
    from invsr_cli.base.paths import display_path

    plan = target_size(w, h, image, max_input_side=run.max_input_side)
    if plan.passes > image.passes:
        more = "is above x16, more than two passes give" if plan.passes > 2 else "needs --passes 2"
        raise InputError(f"{display_path(path)}: the target {plan.describe()} {more}")
    if plan.second_input is not None:
        check_pixels(path, plan.second_input, frames, run.max_pixels, "the second pass's input: ")
    check_tiles(path, count_tiles(plan, frames, image), run.max_tiles)
    return plan


def count_tiles(plan: SizePlan, frames: int, image: Any) -> list[int]:
    """The tiles one frame costs in each pass of ``plan`` (the tiling the unit of work will use, small animation
    frames included: :func:`tile_plan`), times ``frames``: one number per pass."""
    sizes = [plan.input] + ([plan.second_input] if plan.second_input is not None else [])
    return [frames * tile_plan(w, h, image, animated=frames > 1).n_tiles for w, h in sizes]


def check_tiles(path: Path, per_pass: list[int], max_tiles: int | None) -> None:
    """``max_tiles`` bounds the work one file costs, counted before any compute: every frame, every pass."""
    from invsr_cli.base.errors import ImageReadError
    from invsr_cli.base.paths import display_path

    total = sum(per_pass)
    if max_tiles is None or total <= max_tiles:
        return
    how = " + ".join(f"{n}" for n in per_pass) + f" = {total}" if len(per_pass) > 1 else f"{total}"
    raise ImageReadError(f"{display_path(path)}: {how} tiles of work exceeds --max-tiles {max_tiles} (raise "
                         "--max-tiles to run it anyway)")


@dataclass(frozen=True)
class ImagePlan:
    """An image's sizes (:class:`~invsr_cli.geometry.sizing.SizePlan`) and the tile plan of each of its passes."""

    size: SizePlan
    tiles: tuple[Any, ...]  # tiling.TilePlan per pass

    @property
    def n_tiles(self) -> int:
        """Tiles of one frame, every pass."""
        return sum(len(p.tiles) for p in self.tiles)


def tile_plan(w: int, h: int, image: Any, tile: int | None = None, *, animated: bool = False) -> Any:
    """The :class:`~invsr_cli.geometry.tiling.TilePlan` of a ``w`` x ``h`` input (or each frame of an animation,
    ``animated``) under ``image`` settings, with ``tile`` (default: the settings'; smaller after out of memory, the
    overlap shrinking with it): :func:`invsr_cli.geometry.tiling.plan_image`'s rule."""
    from invsr_cli.geometry.tiling import plan_image

    return plan_image(h, w, image.tile if tile is None else tile, image.overlap, animated=animated)


def plan_image(path: Path, w: int, h: int, frames: int, image: Any, run: Any) -> ImagePlan:
    """What processing plans for an image whose size as shown is ``w`` x ``h`` (:func:`plan_for`), and the tiles
    of each pass (the first on the model's input, the second on the second pass's input): the dry run prints it."""
    size = plan_for(path, w, h, frames, image, run)
    inputs = [size.input] + ([size.second_input] if size.second_input else [])
    return ImagePlan(size, tuple(tile_plan(iw, ih, image, animated=frames > 1) for iw, ih in inputs))


def check_container(job: Any, frames: int) -> None:
    """An animation whose output format cannot hold one fails before any compute (InputError, naming the file)."""
    from invsr_cli.base.errors import InputError
    from invsr_cli.base.paths import display_path
    from invsr_cli.imaging.animation import ANIMATION_WRITE_FORMATS

    if frames > 1 and job.format not in ANIMATION_WRITE_FORMATS:
        raise InputError(f"{display_path(job.input)}: an animation of {frames} frames, and {job.format} cannot "
                         "hold an animation; write it as gif, png or webp (--format), or upscale the first frame "
                         "only (--first-frame)")


def skip_reason(info: InputInfo, run: Any) -> str | None:
    """Why ``--skip-if-larger`` (a run setting) leaves this input untouched, or None."""
    n = run.skip_if_larger
    side = max(info.width, info.height)
    if n is not None and side >= n:
        return f"long side {side} px is at least --skip-if-larger {n}"
    return None


def read_input(path: str | os.PathLike[str], run: Any, info: InputInfo | None = None) -> tuple[Any, tuple[int, int]]:
    """Decode ``path`` for the model under the run's read-time settings (``run``); returns (the still or
    animation, its size as shown before any reduction). ``info``: its header, as the driver probed it (``None``:
    probe it here, once)."""
    from invsr_cli.imaging.decode import read_image

    path = Path(path)
    if info is None:
        info = probe_input(path, first_frame=run.first_frame)
    if run.max_input_side is None and not info.animated:
        loaded = read_image(path, max_pixels=run.max_pixels)  # the still path, as it always was
        return loaded, (loaded.width, loaded.height)
    source = (info.width, info.height)
    size = input_size(info.width, info.height, run.max_input_side)
    check_pixels(path, size, info.frames, run.max_pixels)
    if info.animated:
        from invsr_cli.imaging.animation import read_animation, resize_animation

        anim = read_animation(path, first_only=run.first_frame)
        source = (anim.width, anim.height)
        size = input_size(anim.width, anim.height, run.max_input_side)
        loaded: Any = anim if not run.first_frame else _still(anim)
        if size != source:
            loaded = resize_animation(anim, size) if not run.first_frame else reduce_still(loaded, size)
        return loaded, source
    loaded = read_image(path, max_pixels=None)
    source = (loaded.width, loaded.height)
    size = input_size(loaded.width, loaded.height, run.max_input_side)
    return reduce_still(loaded, size), source


def _still(anim: Any) -> Any:
    from invsr_cli.imaging.decode import LoadedImage

    return LoadedImage(path=anim.path, rgb=anim.frames[0], alpha=anim.alpha, grayscale=False, bit_depth=8,
                       format=anim.format, icc=None, exif=None, width=anim.width, height=anim.height, mode=anim.mode)


def reduce_still(loaded: Any, size: tuple[int, int]) -> Any:
    """A still reduced to ``size`` (area averaging, alpha too); unchanged when it is that size already."""
    from invsr_cli.imaging.encode import resize_rgb, upscale_alpha

    if size == (loaded.width, loaded.height):
        return loaded
    alpha = None if loaded.alpha is None else upscale_alpha(loaded.alpha, size)
    return replace(loaded, rgb=resize_rgb(loaded.rgb, size), alpha=alpha, width=size[0], height=size[1])
