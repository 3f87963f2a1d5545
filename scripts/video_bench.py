"""Video I/O cost: decode + encode + remux per frame against the tiny-model upscale per frame, and peak memory
(VmHWM of a child process running decode -> x4 -> encode -> remux) against the video's length.

    PYTHONPATH=$PWD .venv/bin/python scripts/video_bench.py [--lengths 60 600 1800]

Prints what it measured and on which machine; needs the `video` extra (PyAV).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from invsr_cli.imaging import video as V  # noqa: E402
from tests.test_video import _RSS_SCRIPT  # noqa: E402
from tests.videogen import make_video  # noqa: E402


def overhead(d: Path, width: int = 96, height: int = 64, frames: int = 48) -> None:
    import torch

    from invsr_cli.engine.sampler import InvSREngine
    from invsr_cli.engine.testing import build_tiny_models

    info = V.probe(make_video(d / "in.mp4", frames=frames, width=width, height=height))
    t = time.perf_counter()
    decoded = list(V.iter_frames(info))
    dec = (time.perf_counter() - t) / frames
    up = [np.repeat(np.repeat(f.rgb, 4, 0), 4, 1) for f in decoded]
    t = time.perf_counter()
    V.encode_segment(d / "s.mp4", zip(up, info.pts, strict=True), info, encoder="libx264")
    enc = (time.perf_counter() - t) / frames
    t = time.perf_counter()
    V.remux(d / "out.mp4", [d / "s.mp4"], info)
    mux = (time.perf_counter() - t) / frames
    tiny = build_tiny_models(d / "models")
    engine = InvSREngine.load(tiny.sd_dir, tiny.noise_predictor_path, device="cpu")
    lr = torch.from_numpy(np.stack([f.rgb for f in decoded[:8]])).permute(0, 3, 1, 2).float() / 255
    engine.upscale(lr[:1])  # warm-up
    t = time.perf_counter()
    engine.upscale(lr)
    ups = (time.perf_counter() - t) / len(lr)
    print(f"{width}x{height} -> {4 * width}x{4 * height}, {frames} frames, libx264 CRF 18, "
          f"torch threads {torch.get_num_threads()}")
    print(f"decode {dec * 1e3:.2f} ms/frame, encode {enc * 1e3:.2f} ms/frame, remux {mux * 1e3:.2f} ms/frame; "
          f"tiny-model upscale (1 step, batch 8) {ups * 1e3:.1f} ms/frame; "
          f"(decode+encode+remux)/upscale = {(dec + enc + mux) / ups:.4f}")


def memory(d: Path, lengths: list[int]) -> None:
    for n in lengths:
        sub = d / f"rss{n}"
        sub.mkdir()
        src = make_video(sub / "in.mkv", frames=n, width=96, height=72, gop=24)
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(src), str(sub / "out.mkv")],
                              capture_output=True, text=True, check=True, cwd=ROOT)
        print(f"{n} frames (96x72 -> 384x288, 2 s segments): peak RSS {int(done.stdout.split()[-1]) / 1024:.1f} MiB, "
              f"{time.perf_counter() - t:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[60, 600, 1800])
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; PyAV {V.require_av().__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        overhead(Path(tmp))
        memory(Path(tmp), args.lengths)


if __name__ == "__main__":
    main()
