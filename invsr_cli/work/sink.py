"""Where a computed image goes: finish it (colour fix, output checks), write it atomically in the background, and
hand back its :class:`~invsr_cli.work.report.Outcome`.

The sink never records anything: the caller (the run's driver, or a worker that sends outcomes to one) does.
A full disk makes :attr:`ImageSink.stopped` say why; every later write would fail too, so the caller stops.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from invsr_cli.base.errors import DiskFullError, InvSRError, describe_exception, reason_of
from invsr_cli.work.report import Outcome, failed

if TYPE_CHECKING:  # pragma: no cover
    from invsr_cli.work.process import PreparedImage

# write(image, rgb, models) -> (width, height): writes one finished image (models: the engine's weights' identity)
Writer = Callable[["PreparedImage", Any, "dict[str, Any] | None"], tuple[int, int]]

__all__ = ["ImageSink", "WRITERS", "Writer", "output_problem", "write_output"]

WRITERS = 2  # background writer threads; at most 2 * WRITERS finished images wait in memory


def output_problem(torch: Any, hr: Any, lr_rgb: Any) -> str | None:
    """Why this output must not be written, or None. NaN/inf, or one flat colour from an input that was not."""
    if not bool(torch.isfinite(hr).all()):
        bad = int((~torch.isfinite(hr)).sum())
        return f"the model produced {bad} NaN/inf values (try --dtype fp32 or --vae-fp32); output not written"
    if float(hr.amax() - hr.amin()) < 1.0 / 255 and float(lr_rgb.max() - lr_rgb.min()) >= 4.0 / 255:
        return "the model produced a blank (single-colour) image from a non-blank input; output not written"
    return None


def write_output(img: PreparedImage, rgb: Any, models: dict[str, Any] | None = None) -> tuple[int, int]:
    """Runs in a writer thread: re-attach alpha, resize to the target size (``img.size``, see
    :mod:`invsr_cli.geometry.sizing`), encode with the provenance record (how it was made, with which weights), write
    atomically. Returns (w, h). ``rgb`` is an animation's list of frames (animations and GIFs carry no provenance
    record: :mod:`invsr_cli.imaging.animation` writes them)."""
    from invsr_cli.geometry.sizing import scaled_size
    from invsr_cli.imaging.encode import resize_rgb, upscale_alpha, write_image
    from invsr_cli.imaging.provenance import provenance_record

    s = img.settings
    size = img.size.output if img.size is not None else scaled_size(img.loaded.width, img.loaded.height, s.scale)
    job = img.job
    if isinstance(rgb, list) or job.format == "gif":
        from invsr_cli.imaging.animation import write_animation

        frames = rgb if isinstance(rgb, list) else [rgb]
        frames = [f if f.shape[1::-1] == size else resize_rgb(f, size) for f in frames]
        anim = img.loaded if isinstance(rgb, list) else None
        alphas = getattr(anim, "alphas", None) if anim is not None else (
            None if img.loaded.alpha is None else [img.loaded.alpha])
        alphas = None if alphas is None else [upscale_alpha(a, size) for a in alphas]
        write_animation(job.output, frames, alphas=alphas, source=anim, format=job.format, quality=s.quality,
                        lossless=s.lossless)
        return size
    h, w = rgb.shape[:2]
    if size != (w, h):
        rgb = resize_rgb(rgb, size)
    alpha = upscale_alpha(img.loaded.alpha, size) if img.loaded.alpha is not None else None
    passes = img.size.passes if img.size is not None else None
    record = provenance_record(s.to_dict(), models=models, passes=passes) if s.provenance else None
    write_image(job.output, rgb, alpha=alpha, source=img.loaded, format=job.format, quality=s.quality,
                provenance=record, strip_metadata=s.strip_metadata, lossless=s.lossless)
    return size


class ImageSink:
    """Finish computed images and write them in background threads, a bounded number at a time."""

    def __init__(self, device: Any, write: Writer = write_output,
                 writers: int = WRITERS, blend_stage: Callable[[str], Any] | None = None,
                 models: dict[str, Any] | None = None) -> None:
        import contextlib

        import torch

        self.blend_stage = blend_stage or (lambda name: contextlib.nullcontext())
        self.models = models  # the identity of the engine's weights, recorded with each output
        self.torch = torch
        self.device = device
        self.write = write
        self.writers = writers
        self.pool = ThreadPoolExecutor(writers, thread_name_prefix="invsr-write")
        self.pending: deque[tuple[PreparedImage, Future]] = deque()
        self.stopped: str | None = None  # why no more writes should be tried (disk full)

    def frame_result(self, img: PreparedImage, f: int) -> str | None:
        """Colour-fix and check frame ``f``'s blended result (a still has one frame) and keep it, on the CPU, in
        ``img.results[f]``, freeing its device buffer. Returns why it must not be written, or None."""
        torch = self.torch
        with self.blend_stage("blend"):
            hr = img.accs[f].result()  # (3, 4h, 4w) float32 on the device
        img.accs[f] = None  # free the device buffer now, not when the write ends
        s = img.settings
        lr_rgb = img.loaded.frames[f] if hasattr(img.loaded, "frames") else img.loaded.rgb
        if s.color_fix != "none":
            from invsr_cli.engine.colorfix import apply_color_fix

            lr = torch.from_numpy(lr_rgb).permute(2, 0, 1)[None].to(self.device)
            ref = torch.nn.functional.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False)
            hr = apply_color_fix(s.color_fix, hr[None], ref)[0]
        problem = output_problem(torch, hr, lr_rgb)
        if problem:
            return problem
        img.results[f] = hr.clamp(0, 1).permute(1, 2, 0).contiguous().cpu().numpy()
        return None

    def finish(self, img: PreparedImage) -> Iterator[Outcome]:
        """Queue the write of ``img``'s finished frames (see :meth:`frame_result`). Yields the outcomes of older
        writes when too many wait; a failed outcome when a frame not yet finished must not be written."""
        for f, done in enumerate(img.results):
            problem = None if done is not None else self.frame_result(img, f)
            if problem:
                yield failed(img, problem if len(img.results) == 1 else f"frame {f + 1}: {problem}")
                return
        rgb = img.results[0] if not hasattr(img.loaded, "frames") else list(img.results)
        img.lr = None  # free the host buffers now, not when the write ends
        img.results = []
        self.pending.append((img, self.pool.submit(self._timed_write, img, rgb)))
        while len(self.pending) > self.writers * 2:
            yield self._collect()

    def _timed_write(self, img: PreparedImage, rgb: Any) -> tuple[tuple[int, int], float]:
        start = time.perf_counter()
        size = self.write(img, rgb, self.models)
        return size, time.perf_counter() - start

    def ready(self) -> Iterator[Outcome]:
        """The outcomes of writes that have finished, oldest first, without waiting."""
        while self.pending and self.pending[0][1].done():
            yield self._collect()

    def drain(self) -> Iterator[Outcome]:
        """Wait for every write in flight and yield its outcome."""
        while self.pending:
            yield self._collect()

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def _collect(self) -> Outcome:
        img, fut = self.pending.popleft()
        job = img.job
        try:
            (w, h), write_seconds = fut.result()
        except DiskFullError as e:
            self.stopped = f"disk full or I/O error writing {job.output}"
            return failed(img, reason_of(e, job))
        except InvSRError as e:
            return failed(img, reason_of(e, job))
        except Exception as e:  # an encoder bug on one image must not end the batch
            return failed(img, f"cannot write: {describe_exception(e)}")
        return img.outcome(w, h, write_seconds, self.models)
