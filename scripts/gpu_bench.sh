#!/usr/bin/env bash
# GPU check for sessions that borrow an H100/H200 (see docs/PERFORMANCE.md, "GPU").
#
# Run from the repository root on the device machine, with the wheels carried in .whl/ (carry: [".whl"]):
#   bash scripts/gpu_bench.sh            # writes $OUT/gpu_bench.json (and one JSON per case), < 6 minutes
#
# It builds the full-size SD-Turbo + noise predictor ONCE (random weights, fp16 on cuda; nothing downloaded) and
# measures 8 images of LR 128x128 (-> 512x512, one tile each) at batch 1 and 8, 1 and 5 steps: the engine path
# (tiles packed across images, prompt cached, float32 blend on the device) and the authors'-style baseline
# (one image's tiles per batch, prompt per batch, float64 blend). Each case has one untimed warm-up of both paths.
set -euo pipefail
OUT="${OUT:-$PWD/gpu_bench_out}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
python3 - "$OUT" <<'PY' 2>&1 | tee "$OUT/gpu_bench.log"
import json
import sys
import time
from pathlib import Path

import torch

out = Path(sys.argv[1])
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0), flush=True)
import diffusers, transformers  # noqa: E401  (fail early with a clear message if a wheel is missing)
print("diffusers", diffusers.__version__, "transformers", transformers.__version__, flush=True)

from invsr_cli.commands.bench import build_engine, run_bench

t0 = time.perf_counter()
engine = build_engine("cuda", "fp16")
print(f"models built in {time.perf_counter() - t0:.1f} s", flush=True)
results = []
deadline = time.perf_counter() + 300  # stay well inside 6 minutes overall
for steps in (1, 5):
    for batch in (1, 8):
        if time.perf_counter() > deadline:
            print(f"skipped steps={steps} batch={batch}: time budget spent", flush=True)
            continue
        r = run_bench(engine=engine, lr_size="128x128", images=8, steps=steps, tile=128, overlap=32,
                      batch_size=batch, warmup=1)
        r["build_seconds"] = None
        results.append(r)
        (out / f"gpu_bench_s{steps}_b{batch}.json").write_text(json.dumps(r, indent=2))
        e, b = r["engine"], r["baseline"]
        print(f"steps={steps} batch={batch}: engine {e['seconds'] * 1000 / e['tiles']:.1f} ms/tile "
              f"({e['tiles']} tiles, {e['seconds']:.3f} s, peak alloc {e['peak_allocated_mb']:.0f} MB); "
              f"baseline {b['seconds'] * 1000 / b['tiles']:.1f} ms/tile ({b['seconds']:.3f} s); "
              f"baseline/engine time {r['ratios']['time']}", flush=True)
(out / "gpu_bench.json").write_text(json.dumps(results, indent=2))
PY
