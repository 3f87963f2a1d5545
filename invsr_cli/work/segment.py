"""A video segment as a unit of work: its frames decoded one at a time, each upscaled as a still (so the frames of
a segment, and of segments in flight together, share engine batches), and encoded in order into the segment's
file, written atomically.

The driver (:mod:`invsr_cli.run.videos`) cuts a video into segments at keyframes and sends each as an
:class:`~invsr_cli.work.process.ImageTask` whose ``segment`` is a :class:`SegmentSpec` and whose ``job.output`` is
the segment's file; :func:`~invsr_cli.work.process.process_images` runs it through :class:`SegmentInFlight` and
hands back one :class:`~invsr_cli.work.report.Outcome` for the segment (``output``: the segment's file).

Seeds: a frame is a still, so its tile at one place has the seed ``seed + tile index``, the same in every frame of
every segment: a segment's frames are what the whole video decoded in one piece would give, and a segment boundary
is invisible. A video's image settings are chosen once per video: ``auto`` measures the video's first frame in every
segment's worker, so every segment gets the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from invsr_cli.settings.settings import ImageChoice
from invsr_cli.work.report import Outcome, failed

__all__ = ["SegmentSpec", "SegmentInFlight", "even_size"]


@dataclass(frozen=True)
class SegmentSpec:
    """One segment of a video: its frames (``video``, a :meth:`~invsr_cli.imaging.video.VideoInfo.trimmed` info
    holding only them), its place (``index`` of ``count``), and how its file is encoded."""

    video: Any  # imaging.video.VideoInfo, trimmed to the segment
    index: int
    count: int
    encoder: str
    crf: int | None = None
    pix_fmt: str = "yuv420p"

    @property
    def frames(self) -> int:
        return self.video.frames

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON: a Ray row); :meth:`from_dict` reads it back."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "video": self.video.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmentSpec:
        from invsr_cli.imaging.video import VideoInfo

        return cls(**{**d, "video": VideoInfo.from_dict(d["video"])})


def even_size(size: tuple[int, int], pix_fmt: str) -> tuple[int, int]:
    """Chroma-subsampled pixel formats (``yuv420p``...) need even sides: an odd side loses its last pixel."""
    w, h = size
    if "444" in pix_fmt or "rgb" in pix_fmt or "gbr" in pix_fmt:
        return w, h
    return max(2, w - w % 2), max(2, h - h % 2)


@dataclass(eq=False)
class SegmentInFlight:
    """One segment being made: the frames decoded so far, the finished frames waiting for their turn, the encoder.

    :meth:`next_frame` decodes the next frame as a still to upscale; :meth:`frame_done` takes a finished frame
    (in any order) and encodes the frames in order; when the last is handed over the encoder finishes in the
    background (``finishing``); once its writer is done, :meth:`outcome` is the segment's outcome. :meth:`fail` (a frame
    failed, decoding failed, the run stopped) abandons the file and gives the failed outcome, once."""

    task: Any  # ImageTask with .segment
    choice: ImageChoice
    decoded: int = 0
    next_out: int = 0
    ended: bool = False  # failed, or its outcome given
    finishing: bool = False
    waiting: dict[int, Any] = field(default_factory=dict)  # frame number -> (HR rgb, pts)
    pts: dict[int, int] = field(default_factory=dict)  # frame number -> pts, decoded and not yet encoded
    seconds: float = 0.0
    tiles: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    sample: Outcome | None = None  # the first finished frame's outcome: the tile plan, settings, size
    result: Outcome | None = None  # the segment's outcome, once given

    def __post_init__(self) -> None:
        from invsr_cli.imaging.video import SegmentWriter, iter_frames

        spec = self.spec
        self._frames = iter_frames(spec.video)
        self.writer = SegmentWriter(self.task.job.output, spec.video, encoder=spec.encoder, crf=spec.crf,
                                    pix_fmt=spec.pix_fmt)

    @property
    def spec(self) -> SegmentSpec:
        return self.task.segment

    @property
    def job(self) -> Any:
        return self.task.job

    @property
    def exhausted(self) -> bool:
        return self.decoded >= self.spec.frames or self.ended

    def next_frame(self) -> tuple[int, Any]:
        """Decode the next frame: (its number in the segment, a LoadedImage). Raises VideoReadError."""
        from invsr_cli.imaging.decode import LoadedImage

        frame = next(self._frames)
        n = self.decoded
        self.decoded += 1
        if self.decoded == self.spec.frames:
            self._frames.close()  # the last frame: close the file and free the decoder now, not at the run's end
        self.pts[n] = frame.pts
        h, w = frame.rgb.shape[:2]
        rgb = frame.rgb.astype(np.float32) * np.float32(1 / 255)  # what the reader gives for an 8-bit still
        loaded = LoadedImage(path=Path(self.job.input), rgb=rgb, alpha=None, grayscale=False, bit_depth=8,
                             format="video", icc=None, exif=None, width=w, height=h, mode="RGB")
        return n, loaded

    def frame_done(self, n: int, img: Any) -> None:
        """Frame ``n`` (a finished PreparedImage) is done: resize it to the output size (even sides), queue it, and
        encode every frame whose turn has come."""
        from invsr_cli.imaging.encode import quantise, resize_rgb

        rgb = img.results[0]
        size = even_size(img.size.output, self.spec.pix_fmt)
        if rgb.shape[1::-1] != size:
            rgb = resize_rgb(rgb, size)
        rgb = quantise(rgb)
        img.results = []
        img.lr = None
        self.seconds += img.own_seconds
        self.tiles += img.tiles_run + img.n_tiles
        self.batch_sizes.extend(img.batch_sizes)
        if self.sample is None:
            self.sample = img.outcome(*size, 0.0)
        self.waiting[n] = (rgb, self.pts.pop(n))
        while self.next_out in self.waiting:
            start = time.perf_counter()
            self.writer.add(*self.waiting.pop(self.next_out))
            self.seconds += time.perf_counter() - start
            self.next_out += 1
        if self.next_out == self.spec.frames:
            self.writer.finish()
            self.finishing = True

    def outcome(self, models: dict[str, Any] | None = None) -> Outcome:
        """The segment's outcome once its writer is done (raises what the encoder raised: OutputError,
        DiskFullError)."""
        self.ended = True
        frames = self.writer.result()
        o = self.sample
        return replace(o, output=str(self.job.output), seconds=round(self.seconds, 3), tiles=self.tiles,
                       batch_sizes=tuple(self.batch_sizes[:64]), frames=frames, segment=self.spec.index,
                       stage_seconds=None, models=models)

    def fail(self, reason: str) -> Outcome | None:
        """Abandon the segment (its file never appears): its failed outcome, or None when it had ended already."""
        if self.ended:
            return None
        self.ended = True
        self.writer.abandon()
        self._frames.close()
        self.waiting.clear()
        self.result = failed(self.task, reason)
        return self.result

    def close(self) -> None:
        """Leave nothing running (the run ended or stopped before the segment was finished)."""
        if not self.ended:
            self.ended = True
            self.writer.abandon()
        self._frames.close()
