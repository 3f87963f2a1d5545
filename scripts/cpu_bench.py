"""The CPU figures of docs/PERFORMANCE.md, measured in ONE process so every ratio compares paths of the same run.

    python scripts/cpu_bench.py --out bench_out                 # all parts, in this order:
    python scripts/cpu_bench.py --out bench_out --part matrix   # 512x384: authors' settings vs defaults, fp32, bf16
    python scripts/cpu_bench.py --out bench_out --part linearity  # 128², 256², 512² LR, engine path only
    python scripts/cpu_bench.py --out bench_out --part repeat   # authors' settings, 192x128, ABBA x3, medians

The full-size random models are built once in fp32 (nothing is downloaded); the bf16 cases cast the same models.
Every case's `invsr bench` report is written to ``OUT/<case>.json`` as soon as it is measured (a long run that is
stopped keeps what it measured), and ``OUT/summary.json`` collects the ratios. Run it on a quiet machine: on
2 cores a full-size 128-px tile costs ~25 s in fp32, and the matrix alone is ~180 tiles.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

PARTS = ("matrix", "linearity", "repeat")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--part", choices=PARTS, action="append", help="default: all, in the order above")
    ap.add_argument("--lr-size", default="512x384", help="the matrix's LR size")
    ap.add_argument("--tiny", action="store_true", help="tiny random models: checks the script, times mean nothing")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from invsr_cli.commands.bench import build_engine, machine_info, run_bench
    from invsr_cli.engine.sampler import InvSREngine

    t0 = time.perf_counter()
    engine = build_engine("cpu", "fp32", tiny=args.tiny)
    summary: dict = {"machine": machine_info("cpu", torch.float32), "build_seconds": round(time.perf_counter() - t0, 1),
                     "lr_size": args.lr_size, "models": "tiny random" if args.tiny else "full-size random"}

    def case(name: str, **options) -> dict:
        print(f"{time.strftime('%H:%M:%S')} {name}: {options}", flush=True)
        report = run_bench(engine=engine, **({"warmup": 0} | options))
        report["build_seconds"] = None  # built once, above
        report["loadavg_after"] = list(os.getloadavg())
        (args.out / f"{name}.json").write_text(json.dumps(report, indent=2))
        for path in ("engine", "baseline"):
            if report[path]:
                p = report[path]
                print(f"  {path}: {p['tiles']} tiles, {p['seconds']:.1f} s, {p['seconds_per_tile']:.2f} s/tile, "
                      f"peak RSS {p['peak_rss_mb']:.0f} MB ({p['peak_rss_scope']})", flush=True)
        if report["ratios"]:
            print(f"  baseline/engine time {report['ratios']['time']}; output difference "
                  f"{report['output_difference']}", flush=True)
        return report

    def cast(engine: InvSREngine, dtype: torch.dtype) -> InvSREngine:
        """The same models in another dtype, in place, behind a new engine (it reads the dtypes at construction)."""
        for module in (engine.vae, engine.unet, engine.text_encoder, engine.noise_predictor):
            module.to(dtype=dtype)
        return InvSREngine(engine.components)

    def ratio(base: dict, eng: dict) -> float:
        return round(base["seconds"] / eng["seconds"], 3)

    def save() -> None:
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))

    parts = args.part or list(PARTS)
    if "matrix" in parts:
        size = args.lr_size
        # fp32: the baseline first, then the engine path on the same tiles (authors' overlap 64), then the defaults.
        authors = case("fp32_authors", lr_size=size, overlap=64, baseline_first=True)
        base32 = authors["baseline"]
        summary["fp32_authors_baseline_over_engine"] = authors["ratios"]["time"]
        save()
        defaults = case("fp32_defaults", lr_size=size, baseline=False)
        summary["fp32_defaults_baseline_over_engine"] = ratio(base32, defaults["engine"])
        save()
        # bf16: the same models cast (as `--dtype bf16` does after building in fp32).
        engine = cast(engine, torch.bfloat16)
        bf = case("bf16_defaults", lr_size=size, baseline_first=True)
        summary["bf16_defaults_baseline_bf16_over_engine"] = bf["ratios"]["time"]
        summary["bf16_defaults_vs_fp32_baseline"] = ratio(base32, bf["engine"])
        save()
        bfa = case("bf16_authors", lr_size=size, overlap=64, baseline=False)
        summary["bf16_authors_baseline_bf16_over_engine"] = ratio(bf["baseline"], bfa["engine"])
        save()
        engine = cast(engine, torch.float32)
    if "linearity" in parts:
        # Overlap 0: tiles proportional to pixels (1, 4, 16), so this isolates the pipeline's own scaling; the
        # defaults' overlap adds tiles by geometry (see docs/PERFORMANCE.md).
        per_mp = {}
        for n in (128, 256, 512):
            r = case(f"linearity_{n}", lr_size=f"{n}x{n}", overlap=0, baseline=False)
            per_mp[n] = round(r["engine"]["seconds"] / r["engine"]["output_mp"], 3)
            summary["linearity_seconds_per_output_mp"] = per_mp
            summary["linearity_spread"] = round(max(per_mp.values()) / min(per_mp.values()) - 1, 4)
            save()
    if "repeat" in parts:
        # The machine's speed drifts by more than the engine-vs-baseline gap at the authors' settings: alternate
        # the paths (ABBA) three times after a warm-up and compare medians (`invsr bench ... --repeat 3`).
        r = case("repeat_192x128_authors", lr_size="192x128", overlap=64, repeat=3, warmup=1)
        summary["repeat_authors_baseline_over_engine_medians"] = r["ratios"]["time"]
        save()
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    main()
