"""Validation during training: the scores in the log are the metrics of the pixels in the strip, the strip's
"after" is what the upscaler makes with the EMA checkpoint, its "before" the starting predictor's; the page shows
curves and strips; validation leaves the training result unchanged; the hold-out rule."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from invsr_cli.engine.sampler import InvSREngine
from invsr_cli.quality.degrade import degrade, make_rng
from invsr_cli.quality.lpips import load_lpips
from invsr_cli.quality.metrics import psnr_y, ssim_y
from invsr_cli.training.run import run_training
from invsr_cli.training.runlog import read_log
from invsr_cli.training.validate import GAP, split_validation
from tests.harness import temps
from tests.training_kit import images, lpips_home, options


def test_holdout_rule():
    paths = [Path(f"d/{i:03d}.png") for i in range(45)]
    train, held = split_validation(paths, -1)
    assert len(held) == 2 and len(train) == 43 and set(train) | set(held) == set(paths)
    shuffled = random.Random(0).sample(paths, len(paths))
    assert set(split_validation(shuffled, -1)[1]) == set(held)  # not the listing order
    assert len(set(held) & set(split_validation([*paths, Path("d/new.png")], -1)[1])) >= 1  # a file added
    assert split_validation(paths[:19], -1) == (paths[:19], [])  # below twenty: none
    assert len(split_validation(paths, 3)[1]) == 3 and len(split_validation(paths[:2], 5)[1]) == 1
    assert split_validation(paths, 0) == (paths, [])


def _panels(strip: np.ndarray, size: int) -> list[list[np.ndarray]]:
    rows = (strip.shape[0] + GAP) // (size + GAP)
    return [[strip[r * (size + GAP): r * (size + GAP) + size, c * (size + GAP): c * (size + GAP) + size]
             for c in range(4)] for r in range(rows)]


def test_validation_scores_strips_and_page(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(lpips_home(tmp_path / "torch")))
    data = images(tmp_path / "hr")
    val = images(tmp_path / "val", n=2, size=(96, 60), seed=1)  # 60 px wide: reflect-padded to 64
    out = tmp_path / "run"
    warnings: list[str] = []
    run_training(options(tiny_models, data, out, val=(str(val),), val_every=1), warn=warnings.append)
    assert not any("LPIPS" in w for w in warnings), warnings
    recs = [r for r in read_log(out / "log.jsonl") if r["kind"] == "val"]
    assert [r["iteration"] for r in recs] == [0, 1, 2] and all(r["images"] == 2 for r in recs)

    lpips = load_lpips()
    t = lambda a: torch.from_numpy(a.astype(np.float32) / 255)[None].permute(0, 3, 1, 2)  # noqa: E731
    engine = InvSREngine.load(tiny_models.sd_dir, out / "ema_ckpts" / "ema_model_2.pth", device="cpu", dtype="fp32")
    strips = {r["iteration"]: _panels(np.asarray(Image.open(out / r["strip"])), 64) for r in recs}
    for rec in recs:
        rows = strips[rec["iteration"]]
        assert len(rows) == 2
        for k, ((lr_big, before, after, hr), score) in enumerate(zip(rows, rec["per_image"], strict=True)):
            name = f"{k}.png"
            assert score["image"] == name
            assert score["psnr"] == psnr_y(after, hr) and score["ssim"] == ssim_y(after, hr)
            with torch.no_grad():
                assert score["lpips"] == pytest.approx(float(lpips(t(after), t(hr))[0]), rel=1e-6)
            # the HR: the centre crop, reflect-padded where the image is narrower; the LR: its testing degradation
            src = np.asarray(Image.open(val / name).convert("RGB"))
            padded = np.pad(src, ((0, 0), (0, 4), (0, 0)), mode="reflect")
            y = (padded.shape[0] - 64) // 2
            assert np.array_equal(hr, padded[y:y + 64, :64])
            lr, _ = degrade(hr, "testing", make_rng(0, name))
            assert np.array_equal(lr_big, np.repeat(np.repeat(lr, 4, 0), 4, 1))
            assert np.array_equal(before, strips[0][k][2])  # the starting predictor's output, kept
            if rec["iteration"] == 2:  # what `invsr upscale --noise-predictor ema_model_2.pth --steps 1` makes
                up = engine.upscale(t(lr), steps=1, seed=0)[0].permute(1, 2, 0).numpy().astype(np.float64)
                assert np.array_equal(after, np.clip(np.rint(up * 255), 0, 255).astype(np.uint8))
        mean = sum(s["psnr"] for s in rec["per_image"]) / 2
        assert rec["psnr"] == pytest.approx(mean, rel=1e-12) and rec["lpips"] is not None
    assert not np.array_equal(strips[0][0][2], strips[2][0][2])  # the predictor changed

    page = (out / "report.html").read_text()
    assert page.count("<svg") >= 5 and 'src="val/strip_2.png"' in page and 'id="validation"' in page
    assert not temps(out)

    # validation draws from no training stream: the same run without it ends with the same weights
    run_training(options(tiny_models, data, tmp_path / "plain", val_every=0))
    a = torch.load(out / "ckpts" / "model_2.pth", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "plain" / "ckpts" / "model_2.pth", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "plain" / "log.jsonl").read_text().splitlines()[0])["kind"] == "train"
