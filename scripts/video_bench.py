"""What video costs beyond the upscale, measured in one run on this machine:

1. the video I/O alone per frame: decode, encode (libx264, CRF 18) and remux, each timed on its own;
2. the same frames through the whole pipeline (`run_batch`, the tiny models on the CPU) twice: as one video
   (probe, segments, decode, upscale, encode, remux) and as PNG stills (read, upscale, write); the ratio of the two
   is what video adds per frame, against the same upscale;
3. the peak memory (VmHWM) of a child process upscaling a video through the whole pipeline (an engine that repeats
   pixels, so the model's own memory is not in it), against the video's length.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python scripts/video_bench.py [--lengths 60 600 1800]

Prints what it measured and on which machine; needs the `video` extra (PyAV).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from invsr_cli.imaging import video as V  # noqa: E402
from tests.harness import Collect, run_in_process, tiny_settings  # noqa: E402
from tests.test_video_run import peak_rss_kib  # noqa: E402
from tests.videogen import make_video  # noqa: E402


def io_alone(d: Path, src: Path) -> float:
    info = V.probe(src)
    n = info.frames
    t = time.perf_counter()
    decoded = list(V.iter_frames(info))
    dec = (time.perf_counter() - t) / n
    up = [np.repeat(np.repeat(f.rgb, 4, 0), 4, 1) for f in decoded]
    t = time.perf_counter()
    V.encode_segment(d / "s.mp4", zip(up, info.pts, strict=True), info, encoder="libx264")
    enc = (time.perf_counter() - t) / n
    t = time.perf_counter()
    V.remux(d / "io.mp4", [d / "s.mp4"], info)
    mux = (time.perf_counter() - t) / n
    print(f"video I/O alone: decode {dec * 1e3:.2f} ms/frame, encode {enc * 1e3:.2f} ms/frame, remux "
          f"{mux * 1e3:.2f} ms/frame ({info.width}x{info.height} -> {4 * info.width}x{4 * info.height})")
    return dec + enc + mux


def pipeline(d: Path, src: Path, io: float) -> None:
    from PIL import Image

    from invsr_cli.engine.sampler import InvSREngine
    from invsr_cli.engine.testing import build_tiny_models

    tiny = build_tiny_models(d / "models")
    engine = InvSREngine.load(tiny.sd_dir, tiny.noise_predictor_path, device="cpu", dtype="fp32")
    stills = d / "stills"
    stills.mkdir()
    for i, f in enumerate(V.iter_frames(V.probe(src))):
        Image.fromarray(f.rgb).save(stills / f"{i:04d}.png")
    settings = tiny_settings(tiny, segment_seconds=1.0)
    run_in_process([stills], d / "warm", settings=settings, engine=engine)  # warm-up: kernels, caches
    times: dict[str, list[float]] = {"video": [], "stills": []}
    for k in range(2):  # A B B A: the machine's drift cancels out
        for kind in (("video", "stills") if k == 0 else ("stills", "video")):
            t = time.perf_counter()
            rec, summary = run_in_process([src if kind == "video" else stills], d / f"{kind}{k}", engine=engine,
                                          settings=settings, reporter=Collect())
            assert summary.processed == (1 if kind == "video" else len(list(stills.iterdir()))), summary.line()
            times[kind].append(time.perf_counter() - t)
    n = V.probe(src).frames
    video, still = min(times["video"]) / n, min(times["stills"]) / n
    print(f"pipeline, tiny models, CPU fp32, tile 32: video {video * 1e3:.1f} ms/frame, the same frames as PNG "
          f"stills {still * 1e3:.1f} ms/frame (best of 2 each); video/stills = {video / still:.3f}")
    print(f"video I/O / tiny-model pipeline per frame = {io / still:.4f} (the real model's upscale is far slower "
          "than the tiny one, so this is an upper bound)")


def memory(d: Path, lengths: list[int]) -> None:
    for n in lengths:
        sub = d / f"rss{n}"
        sub.mkdir()
        t = time.perf_counter()
        kib = peak_rss_kib(sub, n)
        print(f"{n} frames (96x72 -> 384x288, 2 s segments, whole pipeline): peak RSS {kib / 1024:.1f} MiB, "
              f"{time.perf_counter() - t:.1f} s")


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[60, 600, 1800])
    parser.add_argument("--frames", type=int, default=48)
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; torch threads {torch.get_num_threads()}; PyAV {V.require_av().__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src = make_video(d / "in.mp4", frames=args.frames, width=96, height=64)
        io = io_alone(d, src)
        pipeline(d, src, io)
        memory(d, args.lengths)


if __name__ == "__main__":
    main()
