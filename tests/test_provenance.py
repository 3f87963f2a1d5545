"""Provenance says how an output was made (issue 19, item 4): the size rule and passes, and the weights by their
content, never by where they lie on this machine (the manifest keeps the paths)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from invsr_cli.imaging.provenance import provenance_record, read_provenance
from invsr_cli.settings.settings import DEFAULTS

INVSR = str(Path(sys.executable).parent / "invsr")


def _rec(**kw):
    from dataclasses import replace

    return provenance_record(replace(DEFAULTS, **kw).to_dict(), passes=kw.get("passes"))


def test_the_record_names_the_size_rule_and_passes():
    assert _rec()["scale"] == 4 and _rec()["passes"] == 1 and "max_input_side" not in _rec()
    assert _rec(scale=2.0)["scale"] == 2.0
    for key, value in [("width", 800), ("height", 600), ("fit", (1920, 1080)), ("long_side", 900),
                       ("short_side", 500)]:
        r = _rec(**{key: value}, passes=2, max_input_side=512)
        assert r[key] == (value if key != "fit" else "1920x1080") and "scale" not in r, r
        assert r["passes"] == 2 and r["max_input_side"] == 512


def test_the_record_holds_no_local_path(tmp_path):
    models = {"sd_model": {"source": "local", "path": str(tmp_path / "sd"), "sha256": "ab" * 32},
              "noise_predictor": {"source": "hub", "repo": "OAOA/InvSR", "file": "np.pth", "revision": "c0ffee"}}
    r = provenance_record(DEFAULTS.to_dict(), models=models)
    assert r["models"] == {"sd_model": {"source": "local", "sha256": "ab" * 32},
                           "noise_predictor": models["noise_predictor"]}
    assert str(tmp_path) not in json.dumps(r)
    d = {**DEFAULTS.to_dict(), "sd_model": str(tmp_path / "weights" / "sd"), "noise_predictor": "x/np.pth"}
    assert str(tmp_path) not in json.dumps(provenance_record(d))  # no identity: the name stands in, no folders


def _upscale(*args):
    p = subprocess.run([INVSR, "upscale", *map(str, args)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.mark.slow
def test_same_weights_in_two_folders_give_the_same_bytes(tmp_path, tiny_models):
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    outs = []
    for where in ("a", "b/deeper"):
        sd = shutil.copytree(tiny_models.sd_dir, tmp_path / where / "sd")
        np_file = shutil.copy(tiny_models.noise_predictor_path, tmp_path / where / "np.pth")
        out = tmp_path / f"out-{where.replace('/', '-')}"
        _upscale(tmp_path / "in.png", out, "--sd-model", sd, "--noise-predictor", np_file, "--device", "cpu",
                 "--tile", "16", "--overlap", "0", "--width", "100", "--passes", "2", "--max-input-side", "10",
                 "--format", "png")
        outs.append(out / "in.png")
        manifest = [json.loads(line) for line in (out / ".invsr-manifest.jsonl").read_text().splitlines()]
        assert manifest[-1]["models"]["sd_model"]["path"] == str(Path(sd).resolve())  # the manifest keeps paths
    assert outs[0].read_bytes() == outs[1].read_bytes()
    record = read_provenance(outs[0])
    assert record["width"] == 100 and record["passes"] == 2 and record["max_input_side"] == 10
    assert "scale" not in record and str(tmp_path) not in json.dumps(record)
    with Image.open(outs[0]) as im:
        assert im.size == (100, 60)
