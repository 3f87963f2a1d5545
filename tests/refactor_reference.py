"""Fixed-seed cases whose outputs were recorded with the runner as it was before the unit-of-work refactor
(commit 4d3945f), so later changes can prove they did not move a pixel.

``python -m tests.refactor_reference RECORD_DIR`` re-records (only ever on purpose); the test in
``tests/test_refactor_reference.py`` runs the same cases and compares.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests import imagegen
from tests.harness import invsr

REFERENCE_DIR = Path(__file__).parent / "data" / "refactor_reference"

# name -> extra flags; every case runs on the same inputs, PNG out, CPU fp32, one torch thread.
CASES: dict[str, list[str]] = {
    # tiles of three images of different sizes packed into shared batches of 3, sampled posterior
    "packed": ["--tile", "32", "--overlap", "8", "--batch-size", "3", "--seed", "7"],
    # 5 steps with a colour fix, linear blend, deterministic posterior
    "blur-wavelet": ["--preset", "blur", "--tile", "32", "--overlap", "16", "--blend", "linear",
                     "--color-fix", "wavelet", "--posterior", "mean"],
    # per-image schedules chosen by the analyser, at scale 2
    "auto-scale2": ["--preset", "auto", "--tile", "32", "--overlap", "8", "--scale", "2", "--batch-size", "2"],
}


def make_inputs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    imagegen.rgb(folder / "a_wide.png", 40, 24, seed=11)
    imagegen.rgb(folder / "b_tall.png", 24, 56, seed=12)
    imagegen.rgba(folder / "c_alpha.png", 32, 32)
    noisy = np.asarray(Image.open(folder / "a_wide.png")).astype(float)
    noisy += np.random.default_rng(5).normal(0, 25, noisy.shape)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / "d_noisy.png")
    return folder


def run_case(name: str, inputs: Path, out: Path, models, env: dict[str, str]) -> subprocess.CompletedProcess:
    args = ["upscale", inputs, out, "--format", "png", "--device", "cpu", "--dtype", "fp32",
            "--sd-model", models.sd_dir, "--noise-predictor", models.noise_predictor_path, *CASES[name]]
    return invsr(args, environ=env, timeout=600)


def main(record_dir: Path) -> None:
    import os
    import tempfile

    from invsr_cli.engine.testing import build_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        models = build_tiny_models(tmp_path / "models", seed=0)
        inputs = make_inputs(tmp_path / "in")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        for name in CASES:
            p = run_case(name, inputs, record_dir / name, models, env)
            if p.returncode:
                raise SystemExit(f"{name}: exit {p.returncode}\n{p.stderr.decode()}")
            (record_dir / name / ".invsr-manifest.jsonl").unlink()
            (record_dir / name / ".invsr.lock").unlink(missing_ok=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REFERENCE_DIR)
