"""Small videos made with PyAV for the video tests: moving gradients and a sine-wave audio track."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def frame_rgb(i: int, width: int, height: int) -> np.ndarray:
    """A smooth moving pattern (it compresses well and differs from frame to frame)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 127 + 100 * np.sin((x + 3 * i) / 7.0)
    g = 127 + 100 * np.cos((y - 2 * i) / 5.0)
    b = np.full_like(r, (40 + 5 * i) % 256)
    return np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8)


def make_video(path: Path, *, frames: int = 36, fps: int = 12, width: int = 64, height: int = 48,
               audio: bool = True, codec: str = "libx264", gop: int = 12, rotation: int = 0,
               pts: list[int] | None = None, time_base: Fraction | None = None,
               metadata: dict[str, str] | None = None) -> Path:
    """Write a video; ``pts``/``time_base`` give variable-frame-rate timestamps (default: constant ``fps``)."""
    import av

    tb = time_base or Fraction(1, fps * 100)
    with av.open(str(path), "w") as out:
        out.metadata.update(metadata or {})
        vs = out.add_stream(codec, rate=fps, options={"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
                            if codec == "libx264" else {"g": str(gop)})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.time_base = tb
        vs.codec_context.time_base = tb
        if rotation:
            vs.set_display_rotation(rotation)
        aus = None
        if audio:
            aus = out.add_stream("aac", rate=16000, layout="mono")
        stamps = pts or [round(i / fps / tb) for i in range(frames)]
        for i, p in enumerate(stamps):
            f = av.VideoFrame.from_ndarray(frame_rgb(i, width, height), format="rgb24")
            f.pts, f.time_base = p, tb
            for pkt in vs.encode(f):
                out.mux(pkt)
        for pkt in vs.encode(None):
            out.mux(pkt)
        if aus is not None:
            seconds = float(stamps[-1] * tb) + 1 / fps
            n = int(16000 * seconds)
            t = np.arange(n) / 16000
            wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, n, 1024):
                chunk = wave[start:start + 1024]
                af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = 16000, start, Fraction(1, 16000)
                for pkt in aus.encode(af):
                    out.mux(pkt)
            for pkt in aus.encode(None):
                out.mux(pkt)
    return path


def make_audio(path: Path, *, seconds: float = 1.0, fmt: str = "mp4") -> Path:
    """An audio-only file (one second of silence in AAC): not a video, whatever its extension."""
    import av

    with av.open(str(path), "w", format=fmt) as out:
        s = out.add_stream("aac", rate=16000, layout="mono")
        for start in range(0, int(16000 * seconds), 1024):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, start
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return path
