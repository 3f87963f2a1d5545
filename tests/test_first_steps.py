"""A newcomer's first steps without weights (issue 19, item 8), and a dry run that plans what the run would do
(item 7). The network is made unreachable in each test (HF_ENDPOINT at a closed local port): nothing here may
reach it, and the answers must come at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

INVSR = str(Path(sys.executable).parent / "invsr")
MISSING = ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
           "text_encoder/model.safetensors", "tokenizer/vocab.json", "noise_predictor_sd_turbo_v5.pth")


def _closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def newcomer(tmp_path):
    """A fresh machine: an empty Hugging Face cache, HF_HUB_OFFLINE not set, the Hub unreachable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(photos / f"p{i}.png")
    return env, photos


def _invsr(env, *args):
    t0 = time.perf_counter()
    p = subprocess.run([INVSR, *map(str, args)], capture_output=True, text=True, timeout=120, env=env)
    return p, time.perf_counter() - t0


@pytest.mark.slow
def test_no_weights_offline_network_is_one_quick_clear_error(tmp_path, newcomer):
    env, photos = newcomer
    p, seconds = _invsr(env, "upscale", photos, tmp_path / "out")
    err = p.stderr
    assert p.returncode == 3, err
    assert seconds < 15, seconds  # one refused connection, not huggingface_hub's ~23 s of retries
    for name in MISSING:  # both models, every missing file
        assert name in err, (name, err)
    assert "Retrying" not in err and "Traceback" not in err
    assert "HF_HUB_OFFLINE" not in err  # never set: no advice to unset it
    assert "cannot reach http://127.0.0.1:" in err and "invsr models download" in err
    assert not (tmp_path / "out").exists()  # nothing created: no folder, manifest or lock
    env_off = {**env, "HF_HUB_OFFLINE": "1"}
    p, seconds = _invsr(env_off, "upscale", photos, tmp_path / "out")
    assert p.returncode == 3 and "unset HF_HUB_OFFLINE" in p.stderr and "cannot reach" not in p.stderr, p.stderr
    p, _ = _invsr(env, "upscale", photos, tmp_path / "out", "--sd-model", tmp_path / "nowhere")
    assert p.returncode == 3 and "nowhere" in p.stderr and "noise_predictor_sd_turbo_v5.pth" in p.stderr


@pytest.mark.slow
def test_a_missing_input_is_named_once_and_creates_nothing(tmp_path, newcomer):
    env, _ = newcomer
    gone = tmp_path / "gone.png"
    p, seconds = _invsr(env, "upscale", gone, tmp_path / "out")
    both = p.stdout + p.stderr
    assert p.returncode == 1, both
    assert both.count(str(gone)) == 1 and "no such file" in both, both
    assert not (tmp_path / "out").exists() and seconds < 15


@pytest.mark.slow
def test_dry_run_plans_what_the_run_would_do(tmp_path, tiny_models):
    """On an up-to-date folder the dry run reads the same manifests as the run: it plans nothing, it skips."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(photos / f"p{i}.png")
    out = tmp_path / "out"
    args = [photos, out, "--sd-model", tiny_models.sd_dir, "--noise-predictor", tiny_models.noise_predictor_path,
            "--device", "cpu", "--tile", "16", "--overlap", "0", "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p, _ = _invsr(env, "upscale", *args)
    assert p.returncode == 0, p.stderr
    (photos / "p1.png").touch()  # changed since: the run would recompute it
    before = sorted(out.iterdir())
    p, _ = _invsr(env, "upscale", *args, "--dry-run")
    assert p.returncode == 0, p.stderr
    got = {Path(o["input"]).name: o for o in map(json.loads, p.stdout.splitlines()) if "input" in o}
    assert got["p0.png"]["status"] == "skipped" and got["p0.png"]["reason"] == "up to date", got
    assert got["p1.png"]["status"] == "planned", got
    assert sorted(out.iterdir()) == before  # a dry run writes nothing, not even to the manifest
    p, _ = _invsr(env, "upscale", *args, "--report", tmp_path / "r.html")
    real = {Path(o["input"]).name: o["status"] for o in map(json.loads, p.stdout.splitlines()) if "input" in o}
    assert real == {"p0.png": "skipped", "p1.png": "done"}
    assert f"invsr: report: {tmp_path / 'r.html'}: " in p.stderr, p.stderr  # says where it wrote the page
