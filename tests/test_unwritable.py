"""An output place that cannot be written (issue 19, item 3): a read-only mount, a folder under one, an immutable
folder. `upscale` and `watch` refuse it before any compute, as one line with exit 2 (never a traceback); so do an
unwritable `--report` and an unwritable `--manifest` (without the manifest the next skip-existing cannot work)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from invsr_cli.base.errors import ConfigError
from invsr_cli.base.writable import refuse_unwritable_file, refuse_unwritable_folder
from tests.test_doctor import _read_only_dir as _read_only_mount  # a read-only tmpfs mount where it can

INVSR = str(Path(sys.executable).parent / "invsr")
DENIED = "(Read-only file system|Operation not permitted|Permission denied)"  # a mount, chattr +i, mode 0555


@contextlib.contextmanager
def _immutable(base: Path):
    d = base / "immutable"
    d.mkdir()
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode:
        pytest.skip("chattr +i is not supported here (not root, or the file system has no immutable flag)")
    try:
        yield d
    finally:
        subprocess.run(["chattr", "-i", str(d)], capture_output=True)


@pytest.mark.slow
def test_the_checks_create_nothing_and_name_the_place(tmp_path):
    with _read_only_mount(tmp_path) as ro:
        for folder, verb in [(ro, "cannot write to"), (ro / "a" / "b", "cannot create")]:
            with pytest.raises(ConfigError, match=f"{verb} the output folder {folder}: .*{DENIED}"):
                refuse_unwritable_folder(folder)
        with pytest.raises(ConfigError, match=f"cannot write the report .*{DENIED}"):
            refuse_unwritable_file(ro / "r.html", "the report")
    refuse_unwritable_folder(tmp_path / "new" / "out")  # writable: passes, and creates nothing
    refuse_unwritable_file(tmp_path / "new2" / "m.jsonl", "the manifest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["readonly"]


@pytest.fixture()
def setup(tmp_path, tiny_models):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    models = ["--sd-model", tiny_models.sd_dir, "--noise-predictor", tiny_models.noise_predictor_path,
              "--device", "cpu", "--tile", "16", "--overlap", "0"]
    return tmp_path / "a.png", models


def _refused(p, *needles):
    err = p.stderr
    assert p.returncode == 2, p.stdout + err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("invsr: error: cannot "), err
    for needle in needles:
        assert needle in err, (needle, err)


def _invsr(*args, timeout=120):
    return subprocess.run([INVSR, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_upscale_and_watch_refuse_an_unwritable_output_folder(tmp_path, setup):
    image, models = setup
    with _read_only_mount(tmp_path) as ro:
        for out in (ro, ro / "sub" / "out"):
            _refused(_invsr("upscale", image, out, *models), str(out))
            _refused(_invsr("watch", tmp_path, out, *models), str(out))
        out = tmp_path / "out"
        t0 = time.perf_counter()
        p = _invsr("upscale", image, out, *models, "--report", ro / "report.html")
        _refused(p, "the report", str(ro / "report.html"))
        p = _invsr("upscale", image, out, *models, "--manifest", ro / "m.jsonl")
        _refused(p, "the run manifest", str(ro / "m.jsonl"), "--skip-existing")
        p = _invsr("watch", tmp_path, out, *models, "--manifest", ro / "m.jsonl")
        _refused(p, "the run manifest", "--skip-existing")
        assert not out.exists()  # refused before anything was created or computed
        assert time.perf_counter() - t0 < 60


@pytest.mark.slow
def test_upscale_refuses_an_immutable_output_folder(tmp_path, setup):
    image, models = setup
    with _immutable(tmp_path) as d:
        _refused(_invsr("upscale", image, d, *models), str(d), "Operation not permitted")
        _refused(_invsr("upscale", image, d / "sub", *models), "cannot create", "Operation not permitted")
        assert list(d.iterdir()) == []
