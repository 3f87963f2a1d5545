"""Load time of the full-size architectures (random weights) saved to disk, through the real loading code.

    python scripts/load_time.py --models /tmp/invsr-full build   # once: writes ~5 GB (sd/ and noise_predictor.pth)
    python scripts/load_time.py --models /tmp/invsr-full load    # one timed InvSREngine.load, CPU, fp32

Before/after a change to the loading code, point PYTHONPATH at each checkout in turn (the script only calls
``InvSREngine.load``). A local SD folder's first load also hashes it once for the manifest identity (cached by
path, size and mtime; ``INVSR_CACHE_DIR`` chooses where): run ``load`` twice and take the second figure.

``load`` reads the folder warm from the page cache when ``build`` ran just before (or after a first ``load``): the
figure is the loaders' own work (deserialising, building the modules, strict checks, identity), not the disk.
It prints one JSON object: ``seconds`` (the load), ``touch_seconds`` (then reading every weight once: loaders that
memory-map safetensors defer that work to the first forward pass), peak RSS (``ru_maxrss``) after each, the library
versions and ``accelerate_used`` (whether diffusers sees accelerate). To measure without accelerate, measure before
installing it (hiding it from an environment that has it breaks diffusers' imports).
Run one measurement at a time on a quiet machine: the load itself holds ~5 GB (fp32), more while it copies; a first
load after the files left the page cache reads the disk too (seconds more).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from importlib import metadata
from pathlib import Path


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, required=True, help="folder for sd/ and noise_predictor.pth")
    ap.add_argument("what", choices=("build", "load"))
    args = ap.parse_args()
    sd_dir, np_path = args.models / "sd", args.models / "noise_predictor.pth"

    if args.what == "build":
        from invsr_cli.engine.testing import save_full_size_models

        t0 = time.perf_counter()
        save_full_size_models(args.models)
        print(json.dumps({"built": str(args.models), "seconds": round(time.perf_counter() - t0, 1)}))
        return

    import diffusers  # noqa: F401
    import torch  # imported before the clock starts: the figure is the load, not Python's imports
    import transformers  # noqa: F401

    from invsr_cli.engine.sampler import InvSREngine

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    engine = InvSREngine.load(sd_dir, np_path, device="cpu", dtype="fp32")
    seconds = time.perf_counter() - t0
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # safetensors weights may still be memory-mapped and not yet read: touch every one, so reading them is counted
    t1 = time.perf_counter()
    modules = (engine.unet, engine.vae, engine.text_encoder, engine.noise_predictor)
    params = 0
    for m in modules:
        for p in m.parameters():
            p.sum()
            params += p.numel()
    touch = time.perf_counter() - t1
    print(json.dumps({
        "seconds": round(seconds, 2),
        "touch_seconds": round(touch, 2),
        "peak_rss_mb_after_load": round(rss_after_load),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "parameters": params,
        "threads": torch.get_num_threads(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "accelerate_used": diffusers.utils.is_accelerate_available(),
        "versions": {n: _version(n) for n in ("torch", "diffusers", "transformers", "accelerate", "huggingface_hub")},
    }))


if __name__ == "__main__":
    main()
