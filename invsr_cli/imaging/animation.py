"""Animations: animated GIF, APNG and animated WebP, read frame by frame and written back with Pillow.

Reading (:func:`read_animation`) composites every frame the way a viewer shows it: Pillow's ``seek(i)`` applies
the previous frames' disposal and each frame's blend (GIF, APNG) or decodes the full canvas (WebP, through
libwebp's animation decoder), and ``convert("RGBA")`` gives the whole picture. Per frame it keeps the duration
(ms), and the animation's loop count (``None``: the GIF has no loop extension, it plays once) and each frame's
disposal. A frame that does not decode fails the file, naming the frame and the reason.

Writing (:func:`write_animation`) gives every frame the full upscaled picture, so the result does not depend on
how frames were cut or disposed in the source:

* **GIF**: one adaptive palette for the whole animation, made by median cut (Pillow ``quantize``,
  ``Quantize.MEDIANCUT``) over every frame (each subsampled to at most ~64k pixels for the palette search), 255
  colours plus one transparent index when a frame has alpha (alpha < 0.5 is transparent: GIF alpha is binary).
  Frames are mapped to it without dithering. One palette, not one per frame, and no dithering, because both
  would make static areas shimmer from frame to frame; the cost is some banding on smooth gradients of a
  many-coloured animation. Durations, loop and each frame's disposal are kept.
* **APNG**: RGBA or RGB frames, durations, loop and disposal kept; every frame is written with the "source" blend
  (it replaces the canvas), so the disposal cannot change what is shown.
* **WebP**: libwebp's animation encoder at ``--quality``; durations and loop kept. Pillow hands libwebp full frames
  and libwebp chooses each frame's disposal and blend itself (the WebP container has no disposal to copy from a
  GIF or APNG).

Encoders merge consecutive identical frames into one longer frame (Pillow for GIF/APNG, libwebp): the total time
is kept, the frame count then is not.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from invsr_cli.base.errors import describe_exception

__all__ = ["ANIMATED_FORMATS", "ANIMATION_WRITE_FORMATS", "Animation", "read_animation", "write_animation",
           "resize_animation"]

ANIMATED_FORMATS = ("gif", "png", "webp")  # canonical format names (imageio.canonical_format) read as animations
ANIMATION_WRITE_FORMATS = ("gif", "png", "webp")
_PALETTE_SAMPLE = 65536  # pixels per frame used to build the GIF palette
_GIF_TO_APNG = {0: 0, 1: 0, 2: 1, 3: 2}  # GIF disposal (0 unspecified, 1 keep, 2 background, 3 previous)
_APNG_TO_GIF = {0: 1, 1: 2, 2: 3}  # APNG dispose_op (0 none, 1 background, 2 previous)


@dataclass(frozen=True, eq=False)
class Animation:
    """Decoded frames (float32 ``(h, w, 3)`` in [0, 1], alpha ``(h, w)`` or None each), with what is needed to
    write them back. Looks like a :class:`~invsr_cli.imaging.decode.LoadedImage` where the pipeline asks one (``rgb`` is
    the first frame, which the ``auto`` preset measures; no metadata is carried over)."""

    path: Path
    format: str  # "gif", "png" (APNG) or "webp"
    frames: tuple[np.ndarray, ...]
    alphas: tuple[np.ndarray, ...] | None
    durations: tuple[int, ...]  # ms
    loop: int | None  # 0 = forever; None = no loop extension (GIF: plays once)
    disposal: tuple[int, ...]  # in the source format's numbering; () for WebP
    width: int
    height: int
    grayscale: bool = False
    bit_depth: int = 8
    icc: bytes | None = None
    exif: bytes | None = None
    mode: str = "RGBA"

    @property
    def rgb(self) -> np.ndarray:
        return self.frames[0]

    @property
    def alpha(self) -> np.ndarray | None:
        return None if self.alphas is None else self.alphas[0]

    @property
    def n_frames(self) -> int:
        return len(self.frames)


def _fail(path: Path, reason: str) -> Exception:
    from invsr_cli.base.errors import ImageReadError
    from invsr_cli.base.paths import display_path

    return ImageReadError(f"{display_path(path)}: {' '.join(str(reason).split())}")


def _disposal(im: Any, fmt: str) -> int:
    if fmt == "gif":
        return int(getattr(im, "disposal_method", 0) or 0)
    if fmt == "png":
        return int(im.info.get("disposal", 0) or 0)
    return 0


def read_animation(path: str | os.PathLike[str], *, first_only: bool = False) -> Animation:
    """Decode every frame of an animated GIF, APNG or WebP (only the first with ``first_only``), composited.
    Raises :class:`~invsr_cli.base.errors.ImageReadError` naming the file (and the frame) when one does not decode."""
    from PIL import Image

    from invsr_cli.imaging.decode import canonical_format

    path = Path(path)
    try:
        fp = open(path, "rb")
    except OSError as exc:
        raise _fail(path, f"cannot open: {exc.strerror or describe_exception(exc)}") from None
    with fp:
        try:
            im = Image.open(fp, formats=("GIF", "PNG", "WEBP"))
        except Exception as exc:
            raise _fail(path, f"unreadable header ({describe_exception(exc)})") from None
        with im:
            fmt = canonical_format(im.format or "")
            try:
                n = int(getattr(im, "n_frames", 1) or 1)
            except Exception as exc:
                raise _fail(path, f"unreadable frames ({describe_exception(exc)})") from None
            loop = im.info.get("loop")
            rgbs: list[np.ndarray] = []
            alphas: list[np.ndarray] = []
            durations: list[int] = []
            disposal: list[int] = []
            for i in range(1 if first_only else n):
                try:
                    im.seek(i)
                    rgba = np.asarray(im.convert("RGBA"))  # composited; loads (and checks) the frame
                except Exception as exc:
                    raise _fail(path, f"frame {i + 1} of {n} cannot be decoded ({describe_exception(exc)})") from None
                rgbs.append(rgba[..., :3].astype(np.float32) * np.float32(1 / 255))
                alphas.append(rgba[..., 3])
                durations.append(int(round(float(im.info.get("duration", 0) or 0))))
                if fmt != "webp":
                    disposal.append(_disposal(im, fmt))
    h, w = rgbs[0].shape[:2]
    has_alpha = any(int(a.min()) < 255 for a in alphas)
    return Animation(
        path=path, format=fmt, frames=tuple(np.ascontiguousarray(f) for f in rgbs),
        alphas=tuple(a.astype(np.float32) * np.float32(1 / 255) for a in alphas) if has_alpha else None,
        durations=tuple(durations), loop=None if loop is None else int(loop), disposal=tuple(disposal),
        width=w, height=h, mode="RGBA" if has_alpha else "RGB",
    )


def resize_animation(anim: Animation, size: tuple[int, int], frames: Sequence[np.ndarray] | None = None) -> Animation:
    """``anim`` with every frame (``frames``: replacement pixels, default its own) and alpha resized to
    ``size = (width, height)``: area averaging when shrinking (:func:`invsr_cli.imaging.encode.resize_rgb`)."""
    from invsr_cli.imaging.encode import resize_rgb, upscale_alpha

    frames = anim.frames if frames is None else frames
    new = tuple(f if f.shape[1::-1] == tuple(size) else resize_rgb(f, size) for f in frames)
    alphas = None if anim.alphas is None else tuple(upscale_alpha(a, size) for a in anim.alphas)
    return replace(anim, frames=new, alphas=alphas, width=size[0], height=size[1])



def _gif_frames(rgbs: Sequence[np.ndarray], alphas: Sequence[np.ndarray] | None) -> tuple[list[Any], int | None]:
    """Palette images sharing one adaptive palette (see the module docstring); the transparent index or None."""
    from PIL import Image

    colours = 255 if alphas is not None else 256
    samples = []
    for f in rgbs:
        step = max(1, int(np.ceil(np.sqrt(f.shape[0] * f.shape[1] / _PALETTE_SAMPLE))))
        samples.append(f[::step, ::step].reshape(-1, 3))
    mosaic = np.concatenate(samples)
    side = int(np.ceil(np.sqrt(len(mosaic))))
    mosaic = np.concatenate([mosaic, np.repeat(mosaic[-1:], side * side - len(mosaic), axis=0)])
    palette = Image.fromarray(mosaic.reshape(side, side, 3)).quantize(colours, method=Image.Quantize.MEDIANCUT)
    out = []
    for i, f in enumerate(rgbs):
        p = Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE)
        if alphas is not None:
            idx = np.asarray(p).copy()
            idx[alphas[i] < 128] = 255
            q = Image.fromarray(idx, "P")
            q.putpalette(palette.getpalette()[: 3 * colours] + [0, 0, 0])
            p = q
        out.append(p)
    return out, (255 if alphas is not None else None)


def write_animation(path: str | os.PathLike[str], frames: Sequence[np.ndarray], *, alphas: Sequence[np.ndarray] |
                    None, source: Animation | None, format: str, quality: int = 95, lossless: bool = False) -> int:
    """Encode frames (float32 ``(H, W, 3)``; ``alphas`` float32 ``(H, W)`` or None) as an animated ``format``
    (gif, png or webp; ``lossless`` for webp) with ``source``'s timing, loop and disposal (a still GIF when
    ``source`` is None), and write it atomically. Returns the bytes written."""
    from PIL import Image

    from invsr_cli.base.atomic import atomic_write_bytes
    from invsr_cli.base.errors import OutputError
    from invsr_cli.base.paths import display_path

    path = Path(path)
    if format not in ANIMATION_WRITE_FORMATS:
        raise OutputError(f"{display_path(path)}: {format} cannot hold an animation; write it as gif, png or webp "
                          "(--format), or upscale the first frame only (--first-frame)")
    from invsr_cli.imaging.encode import quantise

    rgbs = [quantise(f) for f in frames]
    a8 = None if alphas is None else [quantise(a) for a in alphas]
    n = len(rgbs)
    durations = list(source.durations) if source is not None else [100] * n
    loop = source.loop if source is not None else None
    disposal = _disposal_for(source, format, n)
    buf = io.BytesIO()
    params: dict[str, Any] = {}
    if n > 1:
        params.update(save_all=True, duration=durations)
    try:
        if format == "gif":
            images, transparency = _gif_frames(rgbs, a8)
            if n > 1:
                params.update(disposal=disposal)
            if loop is not None:
                params["loop"] = loop
            if transparency is not None:
                params["transparency"] = transparency
            images[0].save(buf, "GIF", append_images=images[1:], optimize=False, **params)
        else:
            images = [Image.fromarray(np.dstack([r, a8[i]]) if a8 is not None else r) for i, r in enumerate(rgbs)]
            if n > 1:
                params["loop"] = 1 if loop is None else loop  # no loop extension = play once
            if format == "png":
                if n > 1:
                    params.update(disposal=disposal, blend=[0] * n)  # source blend: each frame replaces the canvas
                images[0].save(buf, "PNG", append_images=images[1:], compress_level=6, **params)
            else:
                images[0].save(buf, "WEBP", append_images=images[1:], quality=int(quality), lossless=lossless,
                               **params)
    except Exception as exc:
        raise OutputError(f"{display_path(path)}: cannot encode {format}: {describe_exception(exc)}") from exc
    return atomic_write_bytes(path, buf.getvalue())


def _disposal_for(source: Animation | None, fmt: str, n: int) -> list[int]:
    """Each frame's disposal in ``fmt``'s numbering: the source's, translated between GIF and APNG."""
    if source is None or not source.disposal:
        return [1 if fmt == "gif" else 0] * n
    if source.format == fmt:
        return list(source.disposal)
    table = _GIF_TO_APNG if source.format == "gif" else _APNG_TO_GIF
    return [table.get(d, 0) for d in source.disposal]
