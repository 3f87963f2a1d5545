"""Messages that must not mislead (issue 19, item 6): each says what is true and suggests only what exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from invsr_cli.base.errors import ImageReadError
from invsr_cli.imaging.decode import pixel_count, probe_image

INVSR = str(Path(sys.executable).parent / "invsr")


def _invsr(*args):
    return subprocess.run([INVSR, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_small_pixel_limits_are_printed_exactly(tmp_path):
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ImageReadError, match=r"a.png: 40x30 = 1200 px exceeds --max-pixels 1000 px$"):
        probe_image(tmp_path / "a.png", max_pixels=1000)
    assert pixel_count(1000) == "1000 px" and pixel_count(8_000_000) == "8000000 px (8.0 MP)"
    for a, b in [(1, 2), (999_999, 1_000_000), (49_999, 50_000)]:  # two different counts never print alike
        assert pixel_count(a) != pixel_count(b)


def test_a_cut_short_jpeg_xl_is_called_damaged(tmp_path):
    pytest.importorskip("pillow_jxl")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.jxl")
    data = (tmp_path / "a.jxl").read_bytes()
    (tmp_path / "cut.jxl").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as info:
        probe_image(tmp_path / "cut.jxl")
    msg = str(info.value)
    assert "cut.jxl" in msg and "damaged or cut short" in msg and "build" not in msg and "debug" not in msg, msg


@pytest.fixture()
def models(tiny_models):
    return ["--sd-model", tiny_models.sd_dir, "--noise-predictor", tiny_models.noise_predictor_path,
            "--device", "cpu", "--tile", "16", "--overlap", "0"]


@pytest.mark.slow
def test_the_animation_advice_names_a_format_that_works(tmp_path, models):
    """"jpg cannot hold an animation; write it as gif, png or webp (--format)": each suggestion is accepted."""
    frames = [Image.fromarray(np.full((8, 12, 3), 60 * i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "a.png", "PNG", save_all=True, append_images=frames[1:], duration=[50, 60, 70], loop=0)
    p = _invsr("upscale", tmp_path / "a.png", tmp_path / "jpg", "--format", "jpg", "--json", *models)
    reason = json.loads(p.stdout.splitlines()[0])["reason"]
    assert p.returncode == 1 and "write it as gif, png or webp (--format)" in reason, p.stdout + p.stderr
    for fmt in ("gif", "png", "webp"):
        p = _invsr("upscale", tmp_path / "a.png", tmp_path / fmt, "--format", fmt, *models)
        assert p.returncode == 0, p.stdout + p.stderr
        with Image.open(tmp_path / fmt / f"a.{fmt}") as im:
            assert im.format == {"gif": "GIF", "png": "PNG", "webp": "WEBP"}[fmt] and im.n_frames == 3
            assert im.size == (48, 32)
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "s.png")
    p = _invsr("upscale", tmp_path / "s.png", tmp_path / "still", "--format", "gif", *models)
    assert p.returncode == 0, p.stdout + p.stderr
    with Image.open(tmp_path / "still" / "s.gif") as im:
        assert im.format == "GIF" and im.size == (32, 32)
    p = _invsr("upscale", tmp_path / "s.png", tmp_path / "lossless", "--format", "gif", "--lossless", *models)
    assert p.returncode == 2 and "lossless" in p.stderr and not (tmp_path / "lossless").exists(), p.stderr
