"""Video in and out with PyAV (``pip install 'invsr-cli[video]'``; its wheels bundle FFmpeg, nothing downloads).

The pieces, each bounded in memory by the frames in flight, whatever the video's length:

* :func:`probe` opens a file and demuxes (without decoding) its video stream's packets: the frame count, every
  frame's presentation timestamp, the keyframes, and from the first decoded frame the rotation. A file without a
  video stream (an audio file) is :class:`NotAVideoError`, a file FFmpeg cannot open or whose video codec it cannot
  decode is :class:`~invsr_cli.base.errors.VideoReadError` naming the file and the codec.
* :func:`plan_segments` (pure) cuts the frames at keyframes into segments of about ``segment_seconds``
  (:data:`DEFAULT_SEGMENT_SECONDS` = 10 s): each segment starts on a keyframe, so it decodes on its own.
* :func:`iter_frames` decodes one segment (or the whole video) as a stream of :class:`VideoFrame` (RGB uint8, with
  its pts and time base). A frame FFmpeg flags corrupt, a decode error or a file that ends before the frames the
  demuxer announced fail with :class:`~invsr_cli.base.errors.VideoReadError` naming the time and the frame.
* :func:`encode_segment` encodes frames into one segment file, written atomically, with the input's codec family
  where the bundled FFmpeg can encode it (:func:`choose_encoder`; else :data:`DEFAULT_ENCODER`), ``crf``, pixel
  format ``yuv420p`` unless asked otherwise, the input's timestamps (variable frame rate kept), rotation and colour
  metadata.
* :func:`remux` joins the segments' video packets (no re-encoding) with the input's audio, subtitle and data
  streams copied packet for packet (so they stay in sync), the container's metadata and a provenance tag, written
  atomically: a failure (a full disk) leaves no partial output and the segments where they were.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from invsr_cli.base.atomic import atomic_write_with
from invsr_cli.base.errors import ConfigError, ImageReadError, OutputError, VideoReadError, describe_exception
from invsr_cli.base.paths import display_path
from invsr_cli.imaging.formats import VIDEO_EXTENSIONS

__all__ = ["DEFAULT_ENCODER", "DEFAULT_SEGMENT_SECONDS", "SEGMENT_SUFFIX", "VIDEO_EXTENSIONS", "NotAVideoError",
           "Segment", "SegmentWriter", "VideoFrame", "VideoInfo", "VideoReadError", "choose_encoder", "encode_segment",
           "first_frame", "frame_at", "iter_frames", "plan_segments", "probe", "remux", "require_av",
           "segment_suffix"]

DEFAULT_SEGMENT_SECONDS = 10.0
DEFAULT_ENCODER = "libx264"  # when the input's codec family has no encoder in the bundled FFmpeg
DEFAULT_PIX_FMT = "yuv420p"
# Input codec family -> encoders of that family, best first (the first the bundled FFmpeg has is used).
_FAMILY_ENCODERS = {
    "h264": ("libx264",), "hevc": ("libx265",), "vp9": ("libvpx-vp9",), "vp8": ("libvpx",),
    "av1": ("libsvtav1", "libaom-av1"), "mpeg4": ("mpeg4",),
}
_DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libvpx-vp9": 24, "libvpx": 10, "libsvtav1": 24, "libaom-av1": 24}
# Container format FFmpeg writes for an output extension (the temporary file's name does not tell it).
_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi",
           ".ts": "mpegts", ".m2ts": "mpegts", ".mts": "mpegts", ".flv": "flv", ".wmv": "asf", ".mpg": "mpeg",
           ".mpeg": "mpeg", ".3gp": "3gp", ".ogv": "ogg", ".nut": "nut"}
# Segment files are mp4: it stores each packet's decode timestamp, negative ones included (B-frames), and the
# demuxer gives them back, which the remux needs (Matroska drops the dts; NUT shifts a segment whose first dts is
# negative). VP8, which mp4 cannot hold, has no B-frames, so Matroska serves it.
SEGMENT_SUFFIX = ".mp4"


def segment_suffix(encoder: str) -> str:
    """The extension of the segment files for ``encoder``."""
    return ".mkv" if encoder == "libvpx" else SEGMENT_SUFFIX


PROVENANCE_KEY = "invsr"


class NotAVideoError(ImageReadError):
    """The file has no video stream (an audio file, say): it is not an input."""


def require_av() -> Any:
    """Import PyAV, or fail naming the extra that installs it."""
    try:
        import av
    except ImportError as exc:
        raise VideoReadError("video needs PyAV: `pip install 'invsr-cli[video]'`") from exc
    # FFmpeg's log stays off (PyAV's default, level None): errors come back as exceptions anyway, and a log callback
    # makes FFmpeg's decoder threads take the GIL, which can deadlock against a main thread closing the container
    # after a corrupt frame (PyAV issues 909 and 1849).
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` found. ``pts`` are the video frames' presentation timestamps in ``time_base`` units, in
    presentation order; ``keyframes`` are indices into them."""

    path: Path
    container: str  # FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    stream_index: int
    codec: str  # decoder name, e.g. "h264"
    width: int
    height: int
    pix_fmt: str | None
    time_base: Fraction
    frame_rate: Fraction | None  # average rate; None when FFmpeg cannot tell
    pts: tuple[int, ...]
    keyframes: tuple[int, ...]
    rotation: int  # degrees counter-clockwise, as VideoFrame.rotation reads it
    color: Mapping[str, int] = field(default_factory=dict)  # primaries, trc, colorspace, range (FFmpeg enums)
    other_streams: tuple[tuple[int, str, str], ...] = ()  # (index, type, codec) of the streams copied as they are
    metadata: Mapping[str, str] = field(default_factory=dict)
    # A trimmed info (:meth:`trimmed`: one segment's frames, what a worker is sent) keeps the place of its frames
    # in the whole video: the index of ``pts[0]`` and the video's first pts, from which seconds are counted.
    first_index: int = 0
    origin_pts: int | None = None

    @property
    def frames(self) -> int:
        return len(self.pts)

    def seconds(self, pts: int) -> float:
        if not self.pts:
            return 0.0
        return float((pts - (self.pts[0] if self.origin_pts is None else self.origin_pts)) * self.time_base)

    def trimmed(self, segment: Segment) -> VideoInfo:
        """This info with only ``segment``'s frames (their timestamps, their place in the video): small enough to
        send to a worker with the segment, which then decodes it without probing the whole file again."""
        lo = segment.first - self.first_index
        return replace(self, pts=self.pts[lo:lo + segment.frames], keyframes=(0,),
                       first_index=segment.first, origin_pts=self.pts[0] if self.origin_pts is None else self.origin_pts)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON: a Ray row); :meth:`from_dict` reads it back."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(path=os.fspath(self.path), time_base=str(self.time_base), pts=list(self.pts),
                 keyframes=list(self.keyframes), frame_rate=None if self.frame_rate is None else str(self.frame_rate),
                 other_streams=[list(s) for s in self.other_streams], color=dict(self.color),
                 metadata=dict(self.metadata))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VideoInfo:
        kw = dict(d)
        kw.update(path=Path(d["path"]), time_base=Fraction(d["time_base"]), pts=tuple(d["pts"]),
                  keyframes=tuple(d["keyframes"]), other_streams=tuple(tuple(s) for s in d["other_streams"]),
                  frame_rate=None if d["frame_rate"] is None else Fraction(d["frame_rate"]))
        return cls(**kw)

    @property
    def duration(self) -> float:
        """First frame's start to the last frame's end (the last frame lasts the median frame interval)."""
        if not self.pts:
            return 0.0
        return self.seconds(self.pts[-1]) + float(self.frame_interval() * self.time_base)

    def frame_interval(self) -> int:
        gaps = sorted(b - a for a, b in zip(self.pts, self.pts[1:], strict=False))
        if gaps:
            return gaps[len(gaps) // 2]
        if self.frame_rate:
            return max(1, round(1 / (self.frame_rate * self.time_base)))
        return 1


@dataclass(frozen=True)
class Segment:
    """Frames ``[first, first + frames)`` of a video (presentation order), starting on a keyframe."""

    index: int
    first: int
    frames: int
    start_pts: int
    end_pts: int | None  # the next segment's first pts (exclusive), None for the last segment
    start_s: float
    end_s: float

    @property
    def last(self) -> int:
        return self.first + self.frames - 1


@dataclass(frozen=True, eq=False)
class VideoFrame:
    """One decoded frame: ``rgb`` uint8 ``(h, w, 3)``, its ``pts`` in ``time_base`` units, ``index`` in the video."""

    rgb: np.ndarray
    pts: int
    time_base: Fraction
    index: int

    @property
    def time(self) -> float:
        return float(self.pts * self.time_base)


def _open_input(av: Any, path: Path) -> Any:
    try:
        return av.open(os.fspath(path), "r")
    except FileNotFoundError as exc:
        raise VideoReadError(f"{display_path(path)}: no such file") from exc
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoReadError(f"{display_path(path)}: cannot read as a video: {describe_exception(exc)}") from exc


def _video_stream(path: Path, container: Any) -> Any:
    streams = list(container.streams.video)
    # An attached picture (cover art in an audio file) is a one-packet "video" stream: not a video.
    streams = [s for s in streams if not (s.disposition and "attached_pic" in str(s.disposition).lower())]
    if not streams:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
        raise NotAVideoError(f"{display_path(path)}: not an input: no video stream ({kinds})")
    return streams[0]


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Open ``path`` and read its video stream's packets (no decoding but of the first frame): frame timestamps,
    keyframes, rotation, colour metadata, the other streams and the container's metadata."""
    av = require_av()
    path = Path(path)
    with _open_input(av, path) as container:
        stream = _video_stream(path, container)
        ctx = stream.codec_context
        if ctx is None or not ctx.codec or not ctx.codec.name:
            raise VideoReadError(f"{display_path(path)}: the bundled FFmpeg cannot decode the video stream")
        codec = ctx.codec.name
        entries: list[tuple[int, bool]] = []
        ends = 0  # the latest pts + duration among the packets
        try:
            for packet in container.demux(stream):
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None or packet.size == 0:
                    continue
                entries.append((ts, bool(packet.is_keyframe)))
                ends = max(ends, ts + (packet.duration or 0))
        except av.error.FFmpegError as exc:
            at = float(entries[-1][0] * stream.time_base) if entries else 0.0
            raise VideoReadError(f"{display_path(path)}: cannot read the video at {at:.3f} s (frame "
                                 f"{len(entries)}): {describe_exception(exc)}") from exc
        if not entries:
            raise VideoReadError(f"{display_path(path)}: the video stream has no frames")
        entries.sort()
        pts = tuple(ts for ts, _ in entries)
        _check_complete(path, stream, pts, ends)
        keyframes = tuple(i for i, (_, key) in enumerate(entries) if key) or (0,)
        if keyframes[0] != 0:
            keyframes = (0, *keyframes)  # leading frames before the first keyframe go with it
        rotation = 0
        color: dict[str, int] = {}
        try:
            container.seek(0, stream=stream) if container.duration else None
            for frame in container.decode(stream):
                rotation = int(round(frame.rotation or 0))
                color = {k: int(getattr(frame, k)) for k in ("color_primaries", "color_trc", "colorspace",
                                                           "color_range")}
                break
        except av.error.FFmpegError as exc:
            raise VideoReadError(f"{display_path(path)}: cannot decode the first frame ({codec}): "
                                 f"{describe_exception(exc)}") from exc
        rate = stream.average_rate or stream.guessed_rate
        others = tuple((s.index, s.type, s.codec_context.name if s.codec_context else "?")
                       for s in container.streams if s.index != stream.index and s.type != "attachment")
        return VideoInfo(
            path=path, container=container.format.name, stream_index=stream.index, codec=codec,
            width=ctx.width, height=ctx.height, pix_fmt=ctx.pix_fmt, time_base=Fraction(stream.time_base),
            frame_rate=Fraction(rate) if rate else None, pts=pts, keyframes=keyframes, rotation=rotation,
            color=color, other_streams=others, metadata=dict(container.metadata))


def _declared_seconds(stream: Any) -> float | None:
    if stream.duration:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get("DURATION")  # Matroska writes each stream's duration as a tag
    if tag:
        try:
            h, m, sec = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec)
        except ValueError:
            return None
    return None


def _check_complete(path: Path, stream: Any, pts: tuple[int, ...], ends: int) -> None:
    """A file that stops before the frames (mp4) or the duration (Matroska) its header declares is truncated."""
    tb = Fraction(stream.time_base)
    gaps = sorted(b - a for a, b in zip(pts, pts[1:], strict=False))
    step = float(gaps[len(gaps) // 2] * tb) if gaps else 0.0
    end = float((max(ends, pts[-1]) - pts[0]) * tb) + (0.0 if ends > pts[-1] else step)
    declared_frames = stream.frames or 0
    declared = _declared_seconds(stream)
    if declared_frames > len(pts) or (declared is not None and step and end < declared - 1.5 * step):
        of = f"{declared_frames} frames" if declared_frames > len(pts) else f"{declared:.3f} s"
        raise VideoReadError(f"{display_path(path)}: truncated video: it ends at {end:.3f} s (frame {len(pts)}) "
                             f"of the {of} its header declares")


def plan_segments(info: VideoInfo, segment_seconds: float = DEFAULT_SEGMENT_SECONDS, *, start: float | None = None,
                  end: float | None = None, max_frames: int | None = None) -> list[Segment]:
    """Cut the frames at keyframes into segments of about ``segment_seconds`` (a segment is longer when keyframes
    are further apart; the first starts on frame 0). ``start``/``end`` (seconds from the first frame) and
    ``max_frames`` choose the frames to keep: ``start`` moves back to the keyframe before it, since a segment must
    start on one."""
    if segment_seconds <= 0:
        raise ConfigError(f"segment_seconds must be > 0, got {segment_seconds}")
    n = info.frames
    lo = 0
    if start is not None and start > 0:
        lo = max((k for k in info.keyframes if info.seconds(info.pts[k]) <= start), default=0)
    hi = n
    if end is not None:
        hi = sum(1 for p in info.pts if info.seconds(p) < end)
    if max_frames is not None:
        hi = min(hi, lo + max(0, max_frames))
    segments: list[Segment] = []
    if hi <= lo:
        return segments
    cuts = [lo]
    for k in info.keyframes:
        if lo < k < hi and info.seconds(info.pts[k]) - info.seconds(info.pts[cuts[-1]]) >= segment_seconds - 1e-9:
            cuts.append(k)
    cuts.append(hi)
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        end_pts = info.pts[b] if b < n else None
        end_s = info.seconds(info.pts[b]) if b < n else info.duration
        segments.append(Segment(index=i, first=a, frames=b - a, start_pts=info.pts[a], end_pts=end_pts,
                                start_s=info.seconds(info.pts[a]), end_s=end_s))
    return segments


def iter_frames(info: VideoInfo, segment: Segment | None = None) -> Iterator[VideoFrame]:
    """Decode ``segment``'s frames (all of ``info``'s frames when None; a :meth:`VideoInfo.trimmed` info holds one
    segment's) in presentation order as RGB uint8, one at a time."""
    av = require_av()
    first = segment.first - info.first_index if segment else 0
    count = segment.frames if segment else info.frames
    wanted = info.pts[first:first + count]
    lo, hi = wanted[0], wanted[-1]
    base = info.first_index + first  # the first frame's index in the whole video
    yielded = 0
    where = info.seconds(lo)
    with _open_input(av, info.path) as container:
        stream = container.streams[info.stream_index]
        # FFmpeg's default slice threading, not frame threading ("AUTO"/"FRAME"): stopping a frame-threaded decoder
        # early (a segment's end, a corrupt frame) can hang in close (PyAV issues 367 and 1849); decoding is a
        # negligible part of a frame's time next to the upscale.
        try:
            if base > 0:
                container.seek(lo, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None or frame.pts < lo or frame.pts > hi:
                    continue
                where = info.seconds(frame.pts)
                if frame.is_corrupt:
                    raise VideoReadError(f"{display_path(info.path)}: corrupt video at {where:.3f} s (frame "
                                         f"{base + yielded}): the decoder flagged the frame corrupt")
                yield VideoFrame(rgb=frame.to_ndarray(format="rgb24"), pts=int(frame.pts),
                                 time_base=info.time_base, index=base + yielded)
                yielded += 1
                if yielded == count:
                    return
        except av.error.FFmpegError as exc:
            raise VideoReadError(f"{display_path(info.path)}: cannot decode the video at {where:.3f} s (frame "
                                 f"{base + yielded}): {describe_exception(exc)}") from exc
    if yielded < count:
        raise VideoReadError(f"{display_path(info.path)}: the video ends early at {where:.3f} s (frame "
                             f"{base + yielded}, {count - yielded} of the segment's {count} frames missing): "
                             "truncated or corrupt")


def frame_at(info: VideoInfo, i: int) -> np.ndarray:
    """Frame ``i`` of ``info``'s frames (RGB uint8, as decoded: no rotation applied), decoded from the keyframe
    before it."""
    t = info.seconds(info.pts[i])
    segment = Segment(index=0, first=info.first_index + i, frames=1, start_pts=info.pts[i], end_pts=None,
                      start_s=t, end_s=t)
    (frame,) = iter_frames(info, segment)
    return frame.rgb


def first_frame(info: VideoInfo) -> np.ndarray:
    """The video's first frame (RGB uint8), from the start of the file: what ``auto`` measures, once per video."""
    av = require_av()
    with _open_input(av, info.path) as container:
        try:
            for frame in container.decode(container.streams[info.stream_index]):
                return frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise VideoReadError(f"{display_path(info.path)}: cannot decode the first frame: "
                                 f"{describe_exception(exc)}") from exc
    raise VideoReadError(f"{display_path(info.path)}: the video stream has no frames")


def choose_encoder(input_codec: str, requested: str | None = None, *, suffix: str = ".mp4") -> str:
    """The encoder for an output: ``requested`` (an FFmpeg encoder name, or a family such as ``h264``/``hevc``) when
    given, else the input's codec family when the bundled FFmpeg can encode it, else :data:`DEFAULT_ENCODER`."""
    av = require_av()
    available = av.codecs_available
    if requested:
        names = _FAMILY_ENCODERS.get(requested, (requested,))
        for name in names:
            if name in available and _encoder_exists(av, name):
                return name
        raise ConfigError(f"--video-codec: the bundled FFmpeg has no encoder {requested!r} (e.g. "
                          f"{', '.join(sorted(n for f in _FAMILY_ENCODERS.values() for n in f if n in available))})")
    for name in _FAMILY_ENCODERS.get(input_codec, ()):
        if name in available and _encoder_exists(av, name) and _muxable(suffix, name):
            return name
    return DEFAULT_ENCODER


def _encoder_exists(av: Any, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (av.error.FFmpegError, ValueError, av.codec.codec.UnknownCodecError):
        return False
    return True


def _muxable(suffix: str, encoder: str) -> bool:
    return not (suffix.lower() == ".webm" and encoder not in ("libvpx-vp9", "libvpx", "libsvtav1", "libaom-av1"))


def muxer_for(path: Path) -> str:
    try:
        return _MUXERS[path.suffix.lower()]
    except KeyError:
        raise ConfigError(f"{display_path(path)}: no video container for the extension {path.suffix!r} "
                          f"(use one of {', '.join(sorted(_MUXERS))})") from None


def encode_segment(path: str | os.PathLike[str], frames: Iterable[np.ndarray | tuple[np.ndarray, int]], info: VideoInfo,
                   *, encoder: str, crf: int | None = None, pix_fmt: str = DEFAULT_PIX_FMT,
                   options: Mapping[str, str] | None = None) -> int:
    """Encode ``frames`` (RGB uint8 arrays with their pts in ``info.time_base``, as ``(rgb, pts)`` pairs) into
    ``path`` (written atomically; the container from the extension), keeping the input's timestamps, rotation and
    colour metadata. Returns the number of frames written."""
    av = require_av()
    path = Path(path)
    fmt = muxer_for(path)
    written = 0

    def write(tmp: Path) -> None:
        nonlocal written
        with av.open(os.fspath(tmp), "w", format=fmt) as out:
            stream = None
            for item in frames:
                rgb, pts = item
                if stream is None:
                    stream = _add_video_stream(out, encoder, rgb, info, crf, pix_fmt, options)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts = pts
                frame.time_base = info.time_base
                for packet in stream.encode(frame):
                    out.mux(packet)
                written += 1
            if stream is None:
                raise OutputError(f"{display_path(path)}: no frames to encode")
            for packet in stream.encode(None):
                out.mux(packet)

    try:
        atomic_write_with(path, write)
    except av.error.FFmpegError as exc:
        raise OutputError(f"{display_path(path)}: cannot encode the video ({encoder}): "
                          f"{describe_exception(exc)}") from exc
    return written


class _Abandoned(Exception):
    """A segment writer was abandoned: the temporary file goes, nothing appears."""


_END = object()


class SegmentWriter:
    """:func:`encode_segment` fed one frame at a time: :meth:`add` hands a frame (RGB uint8 and its pts) to a
    background thread that encodes it, so encoding overlaps the upscale; at most ``depth`` frames wait. After
    :meth:`finish`, :meth:`done` says when the file is written (atomically) and :meth:`result` gives the frames
    written or raises what the encoder raised (an OutputError; DiskFullError on a full disk). :meth:`abandon`
    stops it and leaves nothing."""

    def __init__(self, path: str | os.PathLike[str], info: VideoInfo, *, encoder: str, crf: int | None = None,
                 pix_fmt: str = DEFAULT_PIX_FMT, depth: int = 4) -> None:
        import queue
        import threading

        self.path = Path(path)
        self._queue: Any = queue.Queue(depth)
        self._full, self._empty = queue.Full, queue.Empty
        self._error: BaseException | None = None
        self._frames = 0
        self._thread = threading.Thread(
            target=self._encode, args=(info, encoder, crf, pix_fmt), name="invsr-encode", daemon=True)
        self._thread.start()

    def _items(self) -> Iterator[Any]:
        while (item := self._queue.get()) is not _END:
            if isinstance(item, _Abandoned):
                raise item
            yield item

    def _encode(self, info: VideoInfo, encoder: str, crf: int | None, pix_fmt: str) -> None:
        try:
            self._frames = encode_segment(self.path, self._items(), info, encoder=encoder, crf=crf, pix_fmt=pix_fmt)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc

    def _put(self, item: Any) -> None:
        while True:
            if self._error is not None and not isinstance(self._error, _Abandoned):
                raise self._error
            if not self._thread.is_alive():
                return
            try:
                self._queue.put(item, timeout=0.2)
                return
            except self._full:
                continue

    def add(self, rgb: np.ndarray, pts: int) -> None:
        self._put((rgb, pts))

    def finish(self) -> None:
        """No more frames: the encoder flushes and the file is renamed into place."""
        self._put(_END)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> int:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._frames

    def abandon(self) -> None:
        """Stop encoding; the temporary file is removed and nothing appears at :attr:`path`."""
        while self._thread.is_alive():
            try:
                while True:
                    self._queue.get_nowait()
            except self._empty:  # room for the stop now
                pass
            try:
                self._queue.put_nowait(_Abandoned())
            except self._full:
                continue
            self._thread.join(timeout=5)


def _add_video_stream(out: Any, encoder: str, rgb: np.ndarray, info: VideoInfo, crf: int | None, pix_fmt: str,
                      options: Mapping[str, str] | None) -> Any:
    opts = dict(options or {})
    level = crf if crf is not None else _DEFAULT_CRF.get(encoder)
    if level is not None and encoder in _DEFAULT_CRF:
        opts.setdefault("crf", str(level))
        if encoder.startswith("libvpx"):
            opts.setdefault("b", "0")  # constant quality
    elif level is not None and encoder == "mpeg4":
        opts.setdefault("qscale", str(max(1, min(31, level))))
    rate = info.frame_rate or Fraction(25)
    stream = out.add_stream(encoder, rate=rate, options=opts)
    stream.width, stream.height = int(rgb.shape[1]), int(rgb.shape[0])
    stream.pix_fmt = pix_fmt
    stream.time_base = info.time_base
    stream.codec_context.time_base = info.time_base
    ctx = stream.codec_context
    for key, value in info.color.items():
        if key in ("color_primaries", "color_trc", "colorspace", "color_range") and value:
            try:
                setattr(ctx, key, value)
            except (ValueError, TypeError, AttributeError):
                pass
    if info.rotation:
        stream.set_display_rotation(info.rotation)
    return stream


def _rescale(value: int | None, src: Fraction, dst: Fraction) -> int | None:
    if value is None:
        return None
    return int(round(value * src / dst))


def remux(output: str | os.PathLike[str], segments: Sequence[str | os.PathLike[str]], info: VideoInfo, *,
          provenance: Mapping[str, Any] | None = None, copy_streams: bool = True,
          on_progress: Callable[[int], None] | None = None) -> None:
    """Write ``output`` (atomically) from the segment files' video packets, in order, and the input's other
    streams copied packet for packet, interleaved by time; the input's container metadata is kept and
    ``provenance`` stored as JSON under the ``invsr`` tag."""
    av = require_av()
    output = Path(output)
    fmt = muxer_for(output)

    def write(tmp: Path) -> None:
        # mp4/mov keep only their standard tags unless told to keep every key (the provenance tag is not one).
        options = {"movflags": "use_metadata_tags"} if fmt in ("mp4", "mov", "3gp") else {}
        with _open_input(av, info.path) as source, av.open(os.fspath(tmp), "w", format=fmt,
                                                           options=options) as out:
            out.metadata.update({k: v for k, v in info.metadata.items() if k.lower() not in ("encoder",)})
            if provenance is not None:
                out.metadata[PROVENANCE_KEY] = json.dumps(dict(provenance), sort_keys=True, separators=(",", ":"))
            first = av.open(os.fspath(segments[0]), "r")
            try:
                template = first.streams.video[0]
                vout = out.add_stream_from_template(template)
                rotation = info.rotation
                if rotation:
                    vout.set_display_rotation(rotation)
            finally:
                first.close()
            copies: dict[int, Any] = {}
            if copy_streams:
                for s in source.streams:
                    if s.index == info.stream_index or s.type not in ("audio", "subtitle", "data"):
                        continue
                    try:
                        copies[s.index] = out.add_stream_from_template(s)
                    except (av.error.FFmpegError, ValueError) as exc:
                        raise OutputError(f"{display_path(output)}: cannot copy stream {s.index} ({s.type}, "
                                          f"{s.codec_context.name}) into {fmt}: {describe_exception(exc)}") from exc
            out.start_encoding()
            video = _segment_packets(av, segments, vout, on_progress)
            others = _copied_packets(source, copies)
            last_dts: dict[int, int] = {}
            for _, _, packet, stream in heapq.merge(video, others, key=lambda t: (t[0], t[1])):
                packet.stream = stream
                if packet.dts is not None:
                    prev = last_dts.get(stream.index)
                    if prev is not None and packet.dts <= prev:  # segment joins: keep dts strictly increasing
                        packet.dts = prev + 1
                        if packet.pts is not None and packet.pts < packet.dts:
                            packet.pts = packet.dts
                    last_dts[stream.index] = packet.dts
                out.mux(packet)

    try:
        atomic_write_with(output, write)
    except av.error.FFmpegError as exc:
        raise OutputError(f"{display_path(output)}: cannot write the video: {describe_exception(exc)}") from exc


def _segment_packets(av: Any, segments: Sequence[str | os.PathLike[str]], vout: Any,
                     on_progress: Callable[[int], None] | None) -> Iterator[tuple[float, int, Any, Any]]:
    order = 0
    for i, seg in enumerate(segments):
        with av.open(os.fspath(seg), "r") as src:
            stream = src.streams.video[0]
            tb = Fraction(stream.time_base)
            out_tb = Fraction(vout.time_base) if vout.time_base else tb
            for packet in _with_dts(p for p in src.demux(stream) if p.size):
                packet.pts = _rescale(packet.pts, tb, out_tb)
                packet.dts = _rescale(packet.dts, tb, out_tb)
                packet.duration = _rescale(packet.duration, tb, out_tb) or 0
                packet.time_base = out_tb
                order += 1
                yield float(packet.dts * out_tb), order, packet, vout
        if on_progress is not None:
            on_progress(i + 1)


def _with_dts(packets: Iterable[Any]) -> Iterator[Any]:
    """Give the leading packets a demuxer reads without a decode timestamp (B-frames: the first dts are not stored)
    one just below the first known dts, one tick apart, so that dts increase strictly and stay <= pts."""
    leading: list[Any] = []
    for packet in packets:
        if packet.dts is None and packet.pts is not None:
            leading.append(packet)
            continue
        if leading:
            base = packet.dts if packet.dts is not None else min(p.pts for p in leading)
            for k, early in enumerate(leading):
                early.dts = min(early.pts, base - (len(leading) - k))
                yield early
            leading = []
        if packet.dts is None:
            continue  # neither timestamp: nothing can place it
        yield packet
    for early in leading:  # no dts anywhere (an intra-only stream): decode order is presentation order
        early.dts = early.pts
        yield early


def _copied_packets(source: Any, copies: Mapping[int, Any]) -> Iterator[tuple[float, int, Any, Any]]:
    if not copies:
        return
    order = 0
    for packet in source.demux(*[source.streams[i] for i in copies]):
        if packet.size == 0 or packet.stream.index not in copies:
            continue
        ts = packet.dts if packet.dts is not None else packet.pts
        if ts is None:
            continue
        order += 1
        yield float(ts * packet.time_base), order, packet, copies[packet.stream.index]
