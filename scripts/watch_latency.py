"""Latency of `invsr watch`: from a file settling (its last write + --settle) to its output being written.

Runs the real executable on the tiny random models (CPU, one thread), drops ``--files`` images into the watched
folder one at a time (each renamed in whole, so its mtime is its last write), and reads each output's mtime.
Prints one JSON object: per-file latencies and their median and max, and the median of the images' own
processing time (read, compute, write: the outcome's ``seconds``), in seconds; the difference is the watch's.

    python scripts/watch_latency.py --settle 2 --files 8 [--poll 1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--poll", type=float, default=None)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--size", default="48x40", help="LR size WxH of each image")
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))

    from invsr_cli.engine.testing import build_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = build_tiny_models(root / "models", seed=0)
        inbox, out, scratch = root / "in", root / "out", root / "scratch"
        inbox.mkdir()
        scratch.mkdir()
        rng = np.random.default_rng(0)

        def drop(name: str) -> float:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(scratch / name)
            os.replace(scratch / name, inbox / name)
            return (inbox / name).stat().st_mtime

        cmd = [str(Path(sys.executable).parent / "invsr"), "watch", str(inbox), str(out), "--settle", str(args.settle),
               "--sd-model", str(models.sd_dir), "--noise-predictor", str(models.noise_predictor_path),
               "--device", "cpu", "--tile", "32", "--overlap", "8", "--json"]
        if args.poll:
            cmd += ["--poll", str(args.poll)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE)
        outcomes: list[dict] = []
        reader = threading.Thread(target=lambda: outcomes.extend(json.loads(line) for line in proc.stdout))
        reader.start()
        try:
            drop("warmup.png")  # the first image also pays for the first forward pass
            _wait(out / "warmup.png", proc)
            latencies = []
            for i in range(args.files):
                written = drop(f"img_{i:02d}.png")
                made = _wait(out / f"img_{i:02d}.png", proc)
                latencies.append(round(made - (written + args.settle), 3))
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
            reader.join(10)
        processing = [o["seconds"] for o in outcomes if o.get("type") == "image" and "warmup" not in o["input"]]
    print(json.dumps({"settle": args.settle, "poll": args.poll, "lr_size": args.size, "files": args.files,
                      "exit": rc, "latency_s": latencies, "median_s": round(statistics.median(latencies), 3),
                      "max_s": max(latencies), "processing_median_s": round(statistics.median(processing), 3)}))


def _wait(path: Path, proc: subprocess.Popen, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"no {path} (watcher exit {proc.poll()})")
        time.sleep(0.01)
    return path.stat().st_mtime


if __name__ == "__main__":
    main()
