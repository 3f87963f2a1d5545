"""Per-image overhead of the executors (``--devices``, ``--shard``) against the single-process run, on CPU.

    PYTHONPATH=. python scripts/executor_overhead.py --tiny --images 40
    PYTHONPATH=. python scripts/executor_overhead.py --full --images 3 --lr 64 --tile 64

Every run upscales the same N one-tile images (LR ``--lr`` px square, tile ``--tile``). For each run the steady
per-image interval is (last outcome - first outcome) / (N - 1): start-up (spawning, loading the models) is left
out and reported apart. The overhead per image of an executor is its interval minus the single-process interval
with the same torch threads per engine (``--devices cpu``: one worker); ``cpu,cpu`` (two workers, the threads
split) is reported as a throughput ratio. Shards (tiny only): two ``--shard`` runs one after the other into one
folder, against one plain run: per-run cost and per-image interval.

Full-size uses random SD-Turbo-architecture weights built in memory in each process (``invsr_cli.commands.bench``), seeded
so both are the same; ~6 GB per engine in fp32, so the worker run comes first, while the parent holds no engine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS: dict[str, str] = {}


def full_size_loader(settings):  # picklable: the workers import this script as __mp_main__
    import torch

    from invsr_cli.commands.bench import build_engine

    torch.manual_seed(0)
    return build_engine("cpu", "fp32")


def tiny_loader(settings):
    from invsr_cli.run.executors import load_engine

    return load_engine(settings)


class Stamps:
    """A Reporter that timestamps outcomes."""

    def __init__(self):
        from invsr_cli.work.report import Reporter

        self.base = Reporter()
        self.t: list[float] = []

    def outcome(self, o):
        if o.status == "done":
            self.t.append(time.perf_counter())
        elif o.status == "failed":
            print("failed:", o.input, o.reason, file=sys.stderr)

    def __getattr__(self, name):
        return getattr(self.base, name)


def run(jobs_of, settings, out, executor=None, engine=None, shard=None):
    """One run; with a DevicesExecutor also its own measured messaging cost per image (worker side)."""
    from invsr_cli.run.runner import run_batch

    rep = Stamps()
    t0 = time.perf_counter()
    s = run_batch(jobs_of(out), settings, output_dir=out, reporter=rep, executor=executor, engine=engine,
                  handle_signals=False, shard=shard)
    wall = time.perf_counter() - t0
    n = len(rep.t)
    interval = (rep.t[-1] - rep.t[0]) / (n - 1) if n > 1 else float("nan")
    out = {"wall_s": round(wall, 3), "images": s.processed, "to_first_s": round(rep.t[0] - t0, 3) if n else None,
           "interval_s": round(interval, 4)}
    cost = getattr(executor, "cost", None)
    if cost and cost["images"]:
        out["messaging_ms_per_image"] = round(1000 * cost["worker_seconds"] / cost["images"], 3)
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--lr", type=int, default=32)
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per engine")
    ap.add_argument("--skip-pair", action="store_true", help="no cpu,cpu run (full size: memory)")
    ap.add_argument("--single-first", action="store_true", help="full size: the single-process run first (its "
                    "engine freed before the worker starts), to see the order's effect on a noisy box")
    ap.add_argument("--repeat", type=int, default=1, help="tiny: alternate --devices cpu and single runs this many "
                    "times and report the medians (the box is shared: single runs drift)")
    args = ap.parse_args()
    import torch

    from invsr_cli.engine.testing import build_tiny_models
    from invsr_cli.run.discover import discover
    from invsr_cli.run.executors.devices import DevicesExecutor
    from invsr_cli.run.shard import Shard
    from invsr_cli.settings.settings import resolve_settings
    from tests import imagegen

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="invsr-overhead-"))
    src = tmp / "in"
    src.mkdir()
    for i in range(args.images):
        imagegen.rgb(src / f"img_{i:03d}.png", args.lr, args.lr, seed=i)
    flags = {"device": "cpu", "tile": args.tile, "overlap": 0 if args.lr <= args.tile else 8, "dtype": "fp32",
             "batch_size": 1}
    if args.full:
        loader = full_size_loader
    else:
        m = build_tiny_models(tmp / "models", seed=0)
        flags |= {"sd_model": str(m.sd_dir), "noise_predictor": str(m.noise_predictor_path)}
        loader = tiny_loader
    settings = resolve_settings(None, flags)

    def jobs_of(out):
        return discover([str(src)], out).jobs

    res: dict = {"machine": f"{_cpu_name()}, {os.cpu_count()} cores (shared with other users: noisy)",
                 "models": "full-size random" if args.full else "tiny random", "images": args.images,
                 "lr": args.lr, "tile": args.tile, "threads_per_engine": args.threads}
    if args.single_first and args.full:
        t0 = time.perf_counter()
        engine = loader(settings)
        res["load_in_process_s"] = round(time.perf_counter() - t0, 2)
        res["single"] = run(jobs_of, settings, tmp / "single", engine=engine)
        del engine
        gc.collect()
    res["devices_cpu"] = run(jobs_of, settings, tmp / "dev1",
                             executor=DevicesExecutor(["cpu"], loader=loader, threads=args.threads))
    if not args.skip_pair:
        res["devices_cpu_cpu"] = run(jobs_of, settings, tmp / "dev2",
                                     executor=DevicesExecutor(["cpu", "cpu"], loader=loader,
                                                              threads=args.threads))
    engine = None
    if "single" not in res:
        t0 = time.perf_counter()
        engine = loader(settings)
        res["load_in_process_s"] = round(time.perf_counter() - t0, 2)
        res["single"] = run(jobs_of, settings, tmp / "single", engine=engine)
    if not args.full:
        shards = [run(jobs_of, settings, tmp / "shards", engine=engine, shard=Shard(i, 2)) for i in range(2)]
        res["shards_2"] = {"wall_s": round(sum(s["wall_s"] for s in shards), 3),
                           "interval_s": [s["interval_s"] for s in shards]}
    single = res["single"]["interval_s"]
    res["overhead_per_image_s"] = {"devices_cpu": round(res["devices_cpu"]["interval_s"] - single, 4)}
    res["overhead_share_of_single_image"] = {"devices_cpu": round(res["overhead_per_image_s"]["devices_cpu"]
                                                                  / single, 4)}
    if "devices_cpu_cpu" in res:
        res["speedup_cpu_cpu_vs_single"] = round(single / res["devices_cpu_cpu"]["interval_s"], 3)
    if "shards_2" in res:
        res["shards_2"]["extra_wall_vs_single_s"] = round(res["shards_2"]["wall_s"] - res["single"]["wall_s"], 3)
    if args.repeat > 1 and not args.full:
        import statistics

        pairs = []
        for r in range(args.repeat):
            d = run(jobs_of, settings, tmp / f"rep{r}-dev",
                    executor=DevicesExecutor(["cpu"], loader=loader, threads=args.threads))
            s1 = run(jobs_of, settings, tmp / f"rep{r}-single", engine=engine)["interval_s"]
            pairs.append((d["interval_s"], s1, round(d["interval_s"] - s1, 4), d.get("messaging_ms_per_image")))
        res["repeats"] = {"devices_cpu_vs_single_intervals_difference_s_and_messaging_ms": pairs,
                          "median_overhead_per_image_s": round(statistics.median(p[2] for p in pairs), 4),
                          "median_single_interval_s": round(statistics.median(p[1] for p in pairs), 4)}
    del engine
    gc.collect()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
