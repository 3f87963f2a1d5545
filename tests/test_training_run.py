"""The training loop and its run folder on tiny models: resume bit-identical, the EMA checkpoint loads in the
upscaler (with and without DDP/compile prefixes), an occupied --out is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from invsr_cli.base.errors import ConfigError
from invsr_cli.engine.noise_predictor import load_noise_predictor
from invsr_cli.training.run import TrainOptions, latest_checkpoint, run_training

pytestmark = pytest.mark.slow  # a few tiny training iterations with Real-ESRGAN degradations: ~a minute here


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (80 + 8 * i, 72, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def _opts(tiny_models, data: Path, out: Path, **kw) -> TrainOptions:
    base = dict(inputs=(str(data),), out=str(out), sd_model=str(tiny_models.sd_dir),
                init=str(tiny_models.noise_predictor_path), iterations=4, batch=2, microbatch=1, crop=64,
                lr=1e-4, warmup=2, no_gan=True, no_lpips=True, save_every=2, seed=5)
    base.update(kw)
    return TrainOptions(**base)


def test_resume_is_bit_identical_and_ema_loads(tiny_models, tmp_path):
    data = _images(tmp_path / "hr")
    warnings: list[str] = []
    run_training(_opts(tiny_models, data, tmp_path / "a"), warn=warnings.append)
    assert any("broken.png" in w and "skipped" in w for w in warnings)
    run_training(_opts(tiny_models, data, tmp_path / "b"), stop_after=2)
    assert latest_checkpoint(tmp_path / "b").name == "model_2.pth"
    summary = run_training(TrainOptions(inputs=(), out=str(tmp_path / "b"), resume=True, iterations=0))
    assert summary["iteration"] == 4
    a = torch.load(tmp_path / "a" / "ckpts" / "model_4.pth", weights_only=False)
    b = torch.load(tmp_path / "b" / "ckpts" / "model_4.pth", weights_only=False)
    for key in ("state_dict", "ema_state_dict"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    init = torch.load(tiny_models.noise_predictor_path, weights_only=True)
    assert not all(torch.equal(init[k], a["state_dict"][k]) for k in init)  # it did train
    log = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    assert len(log) == 4 and '"l2"' in log[0]

    ema_path = tmp_path / "a" / "ema_ckpts" / "ema_model_4.pth"
    ema = torch.load(ema_path, weights_only=True)
    assert torch.equal(next(iter(ema.values())), next(iter(a["ema_state_dict"].values())))
    for prefix in ("", "module.", "_orig_mod."):
        path = tmp_path / f"ema_{prefix or 'bare'}.pth"
        torch.save({prefix + k: v for k, v in ema.items()}, path)
        model = load_noise_predictor(path)
        out = model(torch.zeros(1, 3, 16, 16), 249).mean
        assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()

    with pytest.raises(ConfigError, match="holds another run"):
        run_training(_opts(tiny_models, data, tmp_path / "a"))
