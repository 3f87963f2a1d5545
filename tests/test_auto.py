"""`--preset auto` and `invsr analyse` end to end: per-image schedules, reported and batched by schedule."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from invsr_cli.run.discover import discover
from invsr_cli.run.runner import run_batch
from invsr_cli.settings.preset_files import load_policy
from invsr_cli.work.report import Reporter
from tests.harness import invsr, text


def _photo(kind: str, seed: int) -> np.ndarray:
    """A 48x48 LR crop of a real photograph (scikit-image), degraded as the analyser's labelled set is."""
    from skimage import data

    hr = data.astronaut()[64 + seed * 24: 64 + seed * 24 + 192, 160: 352].astype(np.float32)
    if kind == "blur":
        hr = cv2.GaussianBlur(hr, (0, 0), 3.0)
    lr = cv2.resize(hr, (48, 48), interpolation=cv2.INTER_AREA)
    if kind == "noisy":
        lr = lr + np.random.default_rng(seed).normal(0, 25, lr.shape)
    return np.clip(lr, 0, 255).round().astype(np.uint8)


@pytest.fixture
def degraded(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):
        for kind in ("noisy", "blur"):
            Image.fromarray(_photo(kind, i)).save(d / f"{i}_{kind}.png")
    return d


@pytest.mark.slow
def test_analyse_command_reports_estimates_and_choice(degraded):
    p = invsr(["analyse", degraded, "--json"])
    assert p.returncode == 0, text(p)
    rows = {r["input"].rsplit("/", 1)[-1]: r for r in map(json.loads, p.stdout.decode().splitlines())}
    assert set(rows) == {"0_noisy.png", "1_noisy.png", "0_blur.png", "1_blur.png"}
    for name, r in rows.items():
        assert r["preset"] == name.split("_")[1].removesuffix(".png"), r
        assert {"noise_sigma", "blur", "blockiness", "reason"} <= set(r)
    table = invsr(["analyse", degraded / "0_noisy.png"])
    assert table.returncode == 0 and "noisy" in table.stdout.decode() and "rule" in table.stdout.decode()


@pytest.mark.slow
def test_preset_auto_logs_choice_per_image_and_records_it(degraded, tmp_path, tiny_models):
    out = tmp_path / "out"
    p = invsr(["upscale", degraded, out, "--preset", "auto", "--json", "--sd-model", tiny_models.sd_dir,
             "--noise-predictor", tiny_models.noise_predictor_path, "--device", "cpu", "--tile", "48",
             "--overlap", "0"])
    assert p.returncode == 0, text(p)
    images = [o for o in map(json.loads, p.stdout.decode().splitlines()) if o["type"] == "image"]
    assert len(images) == 4
    for o in images:
        kind = "noisy" if "noisy" in o["input"] else "blur"
        assert o["preset"] == kind and o["degradation"]["noise_sigma"] >= 0
        assert o["timesteps"] == ([200] if kind == "noisy" else [250, 200, 150, 100, 50])
    manifest = [json.loads(line) for line in (out / ".invsr-manifest.jsonl").read_text().splitlines()]
    assert sorted(r["preset"] for r in manifest) == ["blur", "blur", "noisy", "noisy"]
    assert all("degradation" in r and r["settings"]["preset"] == r["preset"] for r in manifest)


class CountingEngine:
    def __init__(self, engine):
        self.engine, self.device, self.calls = engine, engine.device, []

    def upscale(self, lr, **kw):
        self.calls.append((len(lr), tuple(kw["timesteps"])))
        return self.engine.upscale(lr, **kw)


@pytest.mark.slow
def test_mixed_schedules_still_fill_batches(degraded, tmp_path, tiny_engine):
    """Images alternate noisy/blur; tiles are grouped by schedule, so batches stay full instead of collapsing
    to one image per forward pass."""
    for i in range(2, 4):  # 8 images: 4 noisy, 4 blur, interleaved
        for kind in ("noisy", "blur"):
            Image.fromarray(_photo(kind, i)).save(degraded / f"{i}_{kind}.png")
    settings = load_policy("auto", {"tile": 48, "overlap": 0, "batch_size": 4, "posterior": "mean"})
    jobs = discover([str(degraded)], tmp_path / "out").jobs
    engine = CountingEngine(tiny_engine)
    summary = run_batch(jobs, settings, output_dir=tmp_path / "out", reporter=Reporter(), engine=engine,
                        handle_signals=False)
    assert summary.processed == 8 and summary.failed == 0
    assert sorted(engine.calls) == [(4, (200,)), (4, (250, 200, 150, 100, 50))], engine.calls
