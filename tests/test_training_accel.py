"""`invsr train` on several processes through accelerate: two CPU processes (gloo) train exactly what one process
trains with the same global batch, only the main process writes the run folder, and the run resumes on one process;
the batch split and the precision rules (pure code)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from invsr_cli.base.errors import ConfigError
from invsr_cli.training.processes import resolve_precision, split_batch
from invsr_cli.training.run import TrainOptions, run_training
from tests.harness import accelerate_launch, temps, text
from tests.threads import torch_threads

_RUN = dict(iterations=2, batch=2, microbatch=1, crop=64, lr=1e-4, warmup=2, save_every=1, seed=5)


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (80 + 8 * i, 72, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _ckpt(run: Path, n: int) -> dict:
    return torch.load(run / "ckpts" / f"model_{n}.pth", map_location="cpu", weights_only=False)


# AdamW's bound on one step of one parameter (Kingma & Ba, section 2.1): |update| <= lr * (1 - b1) / sqrt(1 - b2)
# for the default b1 = 0.9, b2 = 0.999 (3.16 lr); two runs' steps differ by at most twice that.
_ADAM_STEP = (1 - 0.9) / (1 - 0.999) ** 0.5


def _assert_same_training(a: dict, b: dict, lrs: list[float]) -> None:
    """``a`` and ``b`` trained the same, up to float32 rounding (the test's docstring says why not bit for bit):

    * Adam's moments (``exp_avg`` sums (1 - b1) b1^k g, ``exp_avg_sq`` the same of g^2): a gradient element's
      rounding error is a few ulps of the terms summed into it, not of its own value (a gradient that cancels to
      ~1e-11 is all rounding), so each moment is compared within 1e-4 of its largest magnitude over all the
      parameters, while a gradient summed instead of averaged (x2), or a process's share lost (x1/2), moves the
      large ones by half of that magnitude or more;
    * the weights and the EMA: Adam divides by sqrt(v), so a gradient near zero can turn a rounding change into a
      different step, bounded by :data:`_ADAM_STEP` lr per iteration (``lrs``: the iterations' learning rates);
      the scale errors Adam's normalisation would hide there are what the moments catch."""
    bound = 2 * _ADAM_STEP * sum(lrs)
    for key in ("state_dict", "ema_state_dict"):
        assert a[key].keys() == b[key].keys()
        diff = max(float((a[key][k] - b[key][k]).abs().max()) for k in a[key])
        assert diff <= bound, f"{key}: max |difference| {diff:g} > {bound:g}"
    moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in a["optimizer"]["state"].values()]
    others = [(s["exp_avg"], s["exp_avg_sq"]) for s in b["optimizer"]["state"].values()]
    assert len(moments) == len(others) > 0
    for j in range(2):  # exp_avg, exp_avg_sq: each against its largest magnitude over all the parameters
        scale = max(float(x[j].abs().max()) for x in moments)
        diff = max(float((x[j] - y[j]).abs().max()) for x, y in zip(moments, others, strict=True))
        assert diff <= 1e-4 * scale, (j, diff, scale)
    assert a["data"] == b["data"] and a["iters_start"] == b["iters_start"]
    assert torch.equal(a["generator"], b["generator"])  # the same random draws, exactly


@pytest.mark.slow  # starts `accelerate launch` and two Python processes (~10 s here: torch + diffusers twice)
def test_two_processes_train_as_one(tiny_models, tmp_path):
    """Both runs see the same samples and random numbers (drawn per global iteration), and every forward runs on
    one sample (micro-batch 1). One process accumulates g_1/2 + g_2/2 in .grad; two processes each hold g_i/1 and
    the all-reduce gives (g_1 + g_2)/2: the same arithmetic. It is not bit for bit, though: oneDNN's and the BLAS's
    kernels may accumulate in another order in a process that has run other work first (seen on an AMD EPYC: the
    second sample's loss is 1 ulp off when it is its process's first forward, and equal with oneDNN disabled; on
    Intel the runs were identical). So the losses are compared to a relative 1e-6 (16 ulps of float32) and the
    weights and Adam's moments within the bounds :func:`_assert_same_training` derives."""
    data = _images(tmp_path / "hr")
    model = dict(sd_model=str(tiny_models.sd_dir), init=str(tiny_models.noise_predictor_path), no_gan=True,
                 no_lpips=True, device="cpu")
    one, two = tmp_path / "one", tmp_path / "two"
    with torch_threads(1):  # as each launched process (OMP_NUM_THREADS=1)
        run_training(TrainOptions(inputs=(str(data),), out=str(one), **{**_RUN, "iterations": 3}, **model))

    flags = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}" for k, v in
             {**_RUN, **model}.items()]
    p = accelerate_launch(2, ["train", data, "--out", two, "--json", *flags])
    assert p.returncode == 0, text(p)
    records = [json.loads(line) for line in p.stdout.decode().splitlines() if line.startswith("{")]
    assert [r["kind"] for r in records] == ["train", "train", "done"]  # the main process alone reports
    records = records[:2]
    assert [r["iteration"] for r in records] == [1, 2]
    assert all(r["processes"] == 2 for r in records)
    log = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2]  # ... and writes the log once
    ref = [json.loads(line) for line in (one / "log.jsonl").read_text().splitlines()][:2]
    # the global batch's mean loss, as one process computes it (to rounding)
    assert [r["total"] for r in log] == pytest.approx([r["total"] for r in ref], rel=1e-6, abs=0)
    assert sorted(q.name for q in (two / "ckpts").iterdir()) == ["model_1.pth", "model_2.pth"]
    assert temps(two) == []
    a, b = _ckpt(one, 2), _ckpt(two, 2)
    assert b["processes"] == 2
    lrs = [r["lr"] for r in ref]
    _assert_same_training(a, b, lrs)

    # the two-process run resumes on one process and continues as the one-process run did
    with torch_threads(1):
        summary = run_training(TrainOptions(inputs=(), out=str(two), resume=True, iterations=3, device="cpu"))
    assert summary["iteration"] == 3
    lrs = [json.loads(line)["lr"] for line in (one / "log.jsonl").read_text().splitlines()][:3]
    _assert_same_training(_ckpt(one, 3), _ckpt(two, 3), lrs)


def test_batch_split_follows_the_process_count():
    assert split_batch(64, 16, 4) == (16, 1) and split_batch(64, 16, 1) == (16, 4)
    assert split_batch(64, 0, 4) == (16, 1) and split_batch(4, 0, 1) == (4, 1)
    with pytest.raises(ConfigError, match="does not split over 3 processes"):
        split_batch(64, 0, 3)
    with pytest.raises(ConfigError, match="32 per process, which is not a multiple of --microbatch 12"):
        split_batch(64, 12, 2)


def test_precision_rules_on_the_cpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device.*bf16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="--dtype must be one of"):
        resolve_precision("fp8", cpu)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # accelerate launch --mixed_precision bf16
    assert resolve_precision("auto", cpu) == "bf16"


def test_bf16_run_keeps_float32_weights(tiny_models, tmp_path):
    """--dtype bf16 on the CPU trains: the predictor, its EMA and Adam's moments stay float32; no GradScaler (its
    state is empty); the resolved precision is in config.yaml."""
    import yaml

    data = _images(tmp_path / "hr", n=2)
    run_training(TrainOptions(inputs=(str(data),), out=str(tmp_path / "r"), sd_model=str(tiny_models.sd_dir),
                              init=str(tiny_models.noise_predictor_path), no_gan=True, no_lpips=True, dtype="bf16",
                              device="cpu", **{**_RUN, "iterations": 1}))
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["dtype"] == "bf16"
    st = _ckpt(tmp_path / "r", 1)
    assert st["amp_scaler"] == {}
    for key in ("state_dict", "ema_state_dict"):
        assert {v.dtype for v in st[key].values()} == {torch.float32}
    assert {s["exp_avg"].dtype for s in st["optimizer"]["state"].values()} == {torch.float32}
    init = torch.load(tiny_models.noise_predictor_path, weights_only=True)
    assert not all(torch.equal(init[k], st["state_dict"][k]) for k in init)  # it trained
    rec = json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[0])
    assert np.isfinite(rec["total"]) and rec["total"] > 0
