"""What `invsr train` shows: --json records (train, val, done), plain lines off a terminal, the rich progress line
(iteration of the total, it/s, ETA, losses) on one. In process (Typer's runner; a rich console forced to a
terminal)."""

from __future__ import annotations

import io
import json

from rich.console import Console
from typer.testing import CliRunner

from invsr_cli.commands.cli import app
from invsr_cli.commands.train import _Rich
from tests.training_kit import images


def _args(tiny_models, data, out):
    return ["train", str(data), "--out", str(out), "--sd-model", str(tiny_models.sd_dir), "--init",
            str(tiny_models.noise_predictor_path), "--iterations", "2", "--batch", "1", "--crop", "64",
            "--no-gan", "--no-lpips", "--val-every", "0"]


def test_json_and_plain_output(tiny_models, tmp_path):
    data = images(tmp_path / "hr", n=2)
    result = CliRunner().invoke(app, [*_args(tiny_models, data, tmp_path / "a"), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["kind"] for r in lines] == ["train", "train", "done"]
    assert [r["iteration"] for r in lines[:2]] == [1, 2] and lines[0]["iterations"] == 2
    assert {"total", "l2", "lpips", "gan", "lr", "it_per_s", "seconds", "peak_rss_mb"} <= lines[0].keys()
    assert lines[2]["iteration"] == 2 and lines[2]["stopped_by_signal"] is False

    result = CliRunner().invoke(app, _args(tiny_models, data, tmp_path / "b"))
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0].startswith("it 1/2  loss ") and " it/s" in out[0] and out[1].startswith("it 2/2 ")
    assert out[-1] == f"stopped at iteration 2; checkpoints in {tmp_path / 'b'}"


def test_rich_progress_line():
    buf = io.StringIO()
    show = _Rich(Console(file=buf, force_terminal=True, width=160, color_system=None))
    rec = {"kind": "train", "iteration": 3, "iterations": 10, "total": 0.25, "l2": 0.2, "lpips": 0.02,
           "gan": 0.05, "lr": 1e-5, "it_per_s": 1.5}
    show.record(rec)
    show.progress.refresh()
    show.record({**rec, "iteration": 4, "total": 0.125})
    show.record({"kind": "val", "iteration": 4, "psnr": 25.5, "ssim": 0.75, "lpips": None, "images": 2,
                 "strip": "val/strip_4.png"})
    show.warn("a [bold] warning")
    show.progress.refresh()
    show.close()
    text = buf.getvalue()
    assert "train" in text and "3/10" in text and "4/10" in text and "1.50 it/s" in text and "ETA" in text
    assert "loss 0.1250 (l2 0.2000 lpips 0.0200 gan 0.0500)  lr 1.00e-05" in text
    assert "validation at it 4: PSNR 25.50 dB  SSIM 0.7500  LPIPS n/a  (2 image(s); val/strip_4.png)" in text
    assert "warning: a [bold] warning" in text
