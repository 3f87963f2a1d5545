"""Measure `--ray local` against the single-process run on the same inputs and settings (issue 11, item 3).

    PYTHONPATH=. .venv/bin/python scripts/ray_overhead.py --models tiny --images 48 --size 32x24 --tile 32
    PYTHONPATH=. .venv/bin/python scripts/ray_overhead.py --models full --images 6 --size 64x64 --tile 64 \\
        --overlap 16 --batch 2

Builds random models (tiny, or the full-size SD-Turbo/noise-predictor architectures saved in fp16, about 2.6 GB)
and synthetic inputs under --work, then runs, each in its own process with ONE torch thread (a Ray worker gets
one CPU, so one thread: the same compute on both sides):

* single: this process's executor, engine loaded first (its load is not timed in the per-image figure);
* ray: ``RayExecutor("local", workers=1, batch_size=--batch)``: a local cluster, one worker.

Per-image time is measured in the steady state, from the arrival of the first outcome to the last: single
(last - first) / (n - 1); Ray (last - first row) / (n - batch) (a block's rows arrive together). The overhead per
image is their difference. It also reports Ray's start-up (ray.init, and the first row: actor start, engine load,
first block), whether the outputs are byte-identical, and the manifest records per input (exactly once).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path


def build(work: Path, models: str, images: int, size: str) -> tuple[Path, Path, Path]:
    import numpy as np
    from PIL import Image

    inp = work / "in"
    inp.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in size.split("x"))
    rng = np.random.default_rng(0)
    for i in range(images):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (3 + i)) % 256, (yy * 5) % 256, ((xx + yy) * 7 + i) % 256], -1)
        noise = rng.integers(0, 24, size=(h, w, 3))
        Image.fromarray(((base + noise) % 256).astype("uint8")).save(inp / f"img{i:03d}.png")
    if models == "tiny":
        from invsr_cli.engine.testing import build_tiny_models

        m = build_tiny_models(work / "models", seed=0)
        return inp, m.sd_dir, m.noise_predictor_path
    sd_dir, np_path = work / "full" / "sd", work / "full" / "noise_predictor.pth"
    if not (sd_dir / "model_index.json").exists():
        save_full_size(sd_dir, np_path)
    return inp, sd_dir, np_path


def save_full_size(sd_dir: Path, np_path: Path) -> None:
    """The full-size random components as a diffusers folder and a .pth, in fp16 (the loader casts)."""
    import torch

    from invsr_cli.engine.testing import _write_tokenizer, build_full_size_components

    c = build_full_size_components(dtype=torch.float16)
    sd_dir.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(sd_dir / "tokenizer")
    for name in ("vae", "unet", "text_encoder", "scheduler"):
        getattr(c, name).save_pretrained(sd_dir / name, **({} if name == "scheduler" else
                                                             {"safe_serialization": True}))
    (sd_dir / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    torch.save(c.noise_predictor.state_dict(), np_path)


def run_one(mode: str, args: argparse.Namespace) -> dict:
    """One run in this process (``mode`` single or ray); returns its timings."""
    import torch

    torch.set_num_threads(1)
    from invsr_cli.run.discover import discover
    from invsr_cli.run.executors import LocalExecutor, load_engine
    from invsr_cli.run.runner import run_batch
    from invsr_cli.settings.settings import resolve_settings
    from invsr_cli.work.report import Reporter

    settings = resolve_settings(None, {"sd_model": args.sd, "noise_predictor": args.np, "device": "cpu",
                                       "dtype": "fp32", "tile": args.tile, "overlap": args.overlap,
                                       "batch_size": 1})
    arrivals: list[float] = []
    seconds: list[float] = []

    class Times(Reporter):
        def outcome(self, o):
            if o.status == "done":
                arrivals.append(time.perf_counter())
                seconds.append(o.seconds)

    out = Path(args.out)
    found = discover([args.inp], out)
    start = time.perf_counter()
    info: dict = {}
    if mode == "single":
        engine = load_engine(settings)
        info["load_seconds"] = round(time.perf_counter() - start, 2)
        executor = LocalExecutor(engine)
    else:
        from invsr_cli.run.executors.ray_data import RayExecutor

        executor = RayExecutor("local", workers=1, batch_size=args.batch)
    t0 = time.perf_counter()
    summary = run_batch(found.jobs, settings, output_dir=out, reporter=Times(), executor=executor,
                        handle_signals=False)
    n = len(arrivals)
    skip = 1 if mode == "single" else args.batch
    info.update(mode=mode, images=n, processed=summary.processed, failed=summary.failed,
                run_seconds=round(time.perf_counter() - t0, 3),
                steady_per_image=round((arrivals[-1] - arrivals[skip - 1]) / (n - skip), 4),
                mean_image_seconds_in_executor=round(sum(seconds) / n, 4))
    if mode == "ray":
        calls = executor.calls
        span = calls[-1][0] - calls[0][0]
        busy = sum(sec for _, sec, _ in calls[1:])
        after_first = sum(k for _, _, k in calls[1:])
        info.update(startup_seconds=executor.startup_seconds, first_row_seconds=executor.first_row_seconds,
                    duplicates=executor.duplicates, workers=len(executor.workers_seen), calls=len(calls),
                    worker_call_per_image=round(busy / after_first, 4),
                    ray_idle_per_image=round((span - busy) / after_first, 4))
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", choices=("tiny", "full"), default="tiny")
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--size", default="32x24")
    p.add_argument("--tile", type=int, default=32)
    p.add_argument("--overlap", type=int, default=8)
    p.add_argument("--batch", type=int, default=4, help="images per Ray worker call")
    p.add_argument("--work", default="/tmp/invsr-ray-overhead")
    p.add_argument("--order", default="single,ray", help="which run goes first (the machine's load drifts)")
    p.add_argument("--run", choices=("single", "ray"), help=argparse.SUPPRESS)
    p.add_argument("--inp", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--sd", help=argparse.SUPPRESS)
    p.add_argument("--np", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        print(json.dumps(run_one(args.run, args)))
        return
    work = Path(args.work) / args.models
    inp, sd, np_path = build(work, args.models, args.images, args.size)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    results = {}
    for mode in args.order.split(","):
        out = work / f"out-{mode}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        cmd = [sys.executable, __file__, "--run", mode, "--inp", str(inp), "--out", str(out), "--sd", str(sd),
               "--np", str(np_path), "--tile", str(args.tile), "--overlap", str(args.overlap),
               "--batch", str(args.batch)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode:
            sys.exit(f"{mode} failed:\n{r.stderr[-3000:]}")
        results[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    a, b = work / "out-single", work / "out-ray"
    names = sorted(q.name for q in a.iterdir() if not q.name.startswith("."))
    identical = names == sorted(q.name for q in b.iterdir() if not q.name.startswith(".")) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)
    records = [json.loads(line) for line in (b / ".invsr-manifest.jsonl").read_text().splitlines() if line]
    per_input = Counter(r["input"] for r in records)
    overhead = results["ray"]["steady_per_image"] - results["single"]["steady_per_image"]
    # Ray's own cost: the driver's time between a call's rows and the next call's beyond the worker's time in
    # the call (scheduling, the row transfer, the driver's hand-off), per image; and inside the worker, its
    # call against the single-process steady-state time per image (rows built, task records parsed).
    print(json.dumps({
        "models": args.models, "order": args.order, "images": args.images, "size": args.size, "tile": args.tile, "batch": args.batch,
        "machine": f"{os.cpu_count()} CPUs, 1 torch thread per side", **{k: v for k, v in results.items()},
        "overhead_per_image_s": round(overhead, 4),
        "overhead_share_of_one_image": round(overhead / results["single"]["steady_per_image"], 4),
        "ray_idle_per_image_s": results["ray"]["ray_idle_per_image"],
        "worker_call_minus_single_per_image_s": round(results["ray"]["worker_call_per_image"]
                                                     - results["single"]["steady_per_image"], 4),
        "byte_identical": identical, "outputs": len(names),
        "records_per_input": sorted(set(per_input.values())), "inputs_recorded": len(per_input),
    }, indent=1))


if __name__ == "__main__":
    main()
