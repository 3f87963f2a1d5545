"""`invsr doctor`: ready on this machine with local weights; not ready, with the right fix, when the weights are
missing, the output folder cannot be written or a dependency is below its range (a fake dist-info that
importlib.metadata finds first: the real lookup, nothing of ours is mocked)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from invsr_cli.commands.doctor import FAIL, PASS, SUPPORTED, format_line, is_ready, run_checks
from tests.harness import invsr

ROOT = Path(__file__).resolve().parents[1]


def _fake_dist(folder: Path, name: str, version: str) -> Path:
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


@contextlib.contextmanager
def _read_only_dir(base: Path):
    """A folder that cannot be written, even by root (CI runs as root, and root ignores permission bits):
    a read-only tmpfs mount, else an immutable folder (chattr +i), else (not root) mode 0555."""
    d = base / "readonly"
    d.mkdir()
    undo = None
    if os.geteuid() != 0:
        d.chmod(0o555)
        undo = ["chmod", "755", str(d)]
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)],
                        capture_output=True).returncode == 0:
        undo = ["umount", str(d)]
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0:
        undo = ["chattr", "-i", str(d)]
    if undo is None:
        pytest.skip("cannot make a read-only folder here: root without mount or chattr +i permission")
    try:
        with pytest.raises(OSError):  # really read-only, for this process too
            (d / "probe").write_bytes(b"x")
        yield d
    finally:
        subprocess.run(undo, capture_output=True)


def _lines(p) -> dict[str, str]:
    """check name -> its line, from the plain output (``status  name(24 wide) detail``)."""
    return {line[6:30].strip(): line for line in p.stdout.splitlines() if line[:4] in (PASS, "warn", FAIL)}


@pytest.mark.slow
def test_ready_with_local_weights_exit_0(tiny_models, tmp_path):
    t0 = time.perf_counter()
    p = invsr(["doctor", "--json", "--sd-model", tiny_models.sd_dir, "--noise-predictor",
               tiny_models.noise_predictor_path, tmp_path / "out"], text=True, timeout=120)
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)
    assert report["ready"] is True
    checks = {c["name"]: c for c in report["checks"]}
    expected = {"python", "torch build", "devices", "precision", "weights: SD-Turbo", "weights: noise predictor",
                "hf cache", "output folder", "non-ascii paths", "self-test",
                *(f"package {d}" for d in SUPPORTED)}
    assert expected <= set(checks), sorted(checks)
    for name in ("python", "torch build", "weights: SD-Turbo", "weights: noise predictor", "output folder",
                 "non-ascii paths", "self-test"):
        assert checks[name]["status"] == PASS, checks[name]
    assert "strict key check ok" in checks["weights: noise predictor"]["detail"]
    assert "-> 160x96" in checks["self-test"]["detail"]
    # the detail's time is the check's own, as its `seconds` field says (issue 19, item 8)
    said = float(checks["self-test"]["detail"].split("finite, ")[1].split(" s")[0])
    assert abs(said - checks["self-test"]["seconds"]) <= 0.05, checks["self-test"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # the probe leaves nothing
    print(f"invsr doctor (subprocess, CPU): {seconds:.1f} s")


@pytest.mark.slow
def test_missing_weights_read_only_output_and_old_dependency_exit_1(tmp_path):
    """Through the real executable: three faults, three failed lines, each naming its fix; the rest still runs."""
    shim = _fake_dist(tmp_path / "shim", "accelerate", "0.1.0")
    with _read_only_dir(tmp_path) as ro:
        p = invsr(["doctor", ro], text=True, timeout=120,
                  env={"HF_HOME": str(tmp_path / "empty-hf"), "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])})
    assert p.returncode == 1, p.stdout + p.stderr
    lines = _lines(p)
    assert lines["weights: SD-Turbo"].startswith("fail") and "invsr models download" in lines["weights: SD-Turbo"]
    assert "unet/diffusion_pytorch_model.safetensors" in p.stdout or "and" in lines["weights: SD-Turbo"]
    np_line = lines["weights: noise predictor"]
    assert np_line.startswith("fail") and "noise_predictor_sd_turbo_v5.pth" in np_line and "download" in np_line
    out_line = lines["output folder"]
    assert out_line.startswith("fail") and f"cannot write in {ro}" in out_line and "writable" in out_line
    acc = lines["package accelerate"]
    assert acc.startswith("fail") and "0.1.0 is outside the supported range >=0.30" in acc
    assert "pip install --upgrade 'accelerate>=0.30'" in acc
    assert lines["self-test"].startswith("pass")  # the install works even without the weights
    assert p.stdout.splitlines()[-1].startswith("not ready: 4 check(s) failed")
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_each_fault_alone_makes_it_not_ready(tiny_models, tmp_path, monkeypatch):
    """In process, without the self-test: with good weights and folder, exactly the injected fault fails."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    good = dict(sd_model=str(tiny_models.sd_dir), noise_predictor=str(tiny_models.noise_predictor_path),
                self_test=False)
    base = run_checks(tmp_path / "out", **good)
    assert is_ready(base), [format_line(c) for c in base if c.status == FAIL]

    with _read_only_dir(tmp_path) as ro:
        checks = run_checks(ro, **good)
    assert [c.name for c in checks if c.status == FAIL] == ["output folder"]

    monkeypatch.syspath_prepend(str(_fake_dist(tmp_path / "shim", "diffusers", "0.20.0")))
    checks = run_checks(tmp_path / "out", **good)
    failed = [c for c in checks if c.status == FAIL]
    assert [c.name for c in failed] == ["package diffusers"] and ">=0.30" in failed[0].fix


def test_broken_noise_predictor_fails_the_strict_key_check(tiny_models, tmp_path):
    import torch

    state = torch.load(tiny_models.noise_predictor_path, weights_only=True)
    state.pop(sorted(state)[0])
    state["encoder.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    checks = {c.name: c for c in run_checks(None, sd_model=str(tiny_models.sd_dir), noise_predictor=str(bad),
                                            self_test=False)}
    c = checks["weights: noise predictor"]
    assert c.status == FAIL and "missing keys" in c.detail and "encoder.extra.weight" in c.detail


def test_truncated_sd_weights_fail(tiny_models, tmp_path):
    sd = tmp_path / "sd"
    shutil.copytree(tiny_models.sd_dir, sd)
    f = sd / "unet" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])  # an interrupted download
    checks = {c.name: c for c in run_checks(None, sd_model=str(sd),
                                            noise_predictor=str(tiny_models.noise_predictor_path), self_test=False)}
    c = checks["weights: SD-Turbo"]
    assert c.status == FAIL and "truncated" in c.detail and str(f) in c.detail


def test_hub_cache_lookup_finds_weights_without_downloading(tiny_models, tmp_path, monkeypatch):
    """A Hugging Face cache laid out as huggingface_hub writes it: SD found there; the tiny noise predictor loads
    strictly but is refused as the default, since its architecture is not the official one."""
    hub = tmp_path / "hf" / "hub"
    for repo, files in (("models--stabilityai--sd-turbo", tiny_models.sd_dir),
                        ("models--OAOA--InvSR", None)):
        snap = hub / repo / "snapshots" / "0123abcd"
        if files is not None:
            shutil.copytree(files, snap)
        else:
            snap.mkdir(parents=True)
            shutil.copy(tiny_models.noise_predictor_path, snap / "noise_predictor_sd_turbo_v5.pth")
        (hub / repo / "refs").mkdir()
        (hub / repo / "refs" / "main").write_text("0123abcd")
    import huggingface_hub.constants as hub_constants

    # huggingface_hub reads these when first imported (already done in this process): set both the environment
    # and its constants, as a fresh process would see them.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    checks = {c.name: c for c in run_checks(None, self_test=False)}
    sd = checks["weights: SD-Turbo"]
    assert sd.status == PASS and "stabilityai/sd-turbo" in sd.detail and "0123abcd" in sd.detail
    npc = checks["weights: noise predictor"]
    assert npc.status == FAIL and "not the official one" in npc.detail


def test_supported_ranges_match_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    for dist, spec in SUPPORTED.items():
        if dist == "accelerate":
            continue
        assert f'"{dist}{spec}"' in text, (dist, spec)  # av: the `video` extra's range


def test_weight_lines_and_cache_line_agree_about_offline_mode(tmp_path, monkeypatch):
    """Offline mode off: no line says "offline mode" but the cache line's "off"; on: every line agrees."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for offline in (False, True):
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", offline)
        checks = {c.name: c for c in run_checks(None, self_test=False)}
        weights = checks["weights: SD-Turbo"].detail + checks["weights: noise predictor"].detail
        assert ("offline mode" in weights) is offline, weights
        assert ("offline mode on" if offline else "offline mode off") in checks["hf cache"].detail
