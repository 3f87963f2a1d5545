"""The weights' identity in run manifests: cheap (hashes cached by path, size and mtime), never the network, and
outputs made with other weights are stale under --skip-existing (end to end through the real `invsr`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from invsr_cli.engine import model_identity
from invsr_cli.engine.identity import file_sha256, hash_cache_path
from tests import imagegen
from tests.harness import invsr, manifest_records, text

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "invsr-cache"
    monkeypatch.setenv("INVSR_CACHE_DIR", str(folder))
    return folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rewrite_keeping_stamp(path: Path, data: bytes) -> None:
    """New content of the same size, with the old mtime put back: what the cache cannot see."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_files_hash_is_computed_once_and_cached_by_path_size_and_mtime(cache_dir, tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    first = file_sha256(f)
    assert first == _sha(f)
    entry = json.loads((cache_dir / "hashes.json").read_text())[str(f.resolve())]
    assert entry == {"size": 1000, "mtime_ns": f.stat().st_mtime_ns, "sha256": first}

    # Same size and mtime, other bytes: the second call answers from the cache, so it did not read the file.
    _rewrite_keeping_stamp(f, b"b" * 1000)
    assert file_sha256(f) == first != _sha(f)

    # A new mtime (as any real write gives) invalidates the entry: the new content is hashed.
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert file_sha256(f) == _sha(f) != first
    assert sorted(p.name for p in cache_dir.iterdir()) == ["hashes.json"]  # written atomically: no leftovers


def test_an_unusable_cache_costs_only_rehashing(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("INVSR_CACHE_DIR", str(blocker))
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert file_sha256(f) == _sha(f)
    monkeypatch.setenv("INVSR_CACHE_DIR", str(tmp_path / "c"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "hashes.json").write_text("{ truncated")
    assert file_sha256(f) == _sha(f)
    assert json.loads((tmp_path / "c" / "hashes.json").read_text())[str(f.resolve())]["sha256"] == _sha(f)


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("INVSR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hash_cache_path() == tmp_path / "xdg" / "invsr" / "hashes.json"
    monkeypatch.setenv("INVSR_CACHE_DIR", str(tmp_path / "mine"))
    assert hash_cache_path() == tmp_path / "mine" / "hashes.json"


def test_local_identity_is_stable_json_and_follows_the_content(cache_dir, tmp_path, tiny_models):
    sd = tmp_path / "sd"
    shutil.copytree(tiny_models.sd_dir, sd)
    np_path = tmp_path / "np.pth"
    shutil.copy2(tiny_models.noise_predictor_path, np_path)
    ident = model_identity(str(sd), str(np_path))
    assert ident == json.loads(json.dumps(ident))
    assert ident["noise_predictor"] == {"source": "local", "path": str(np_path.resolve()), "sha256": _sha(np_path)}
    assert ident["sd_model"]["source"] == "local" and ident["sd_model"]["path"] == str(sd.resolve())
    assert model_identity(str(sd), str(np_path)) == ident  # stable

    cfg = sd / "scheduler" / "scheduler_config.json"  # any file loading reads is part of the folder's hash
    cfg.write_text(cfg.read_text().replace('"steps_offset": 1', '"steps_offset": 0'))
    changed = model_identity(str(sd), str(np_path))
    assert changed["sd_model"]["sha256"] != ident["sd_model"]["sha256"]
    assert changed["noise_predictor"] == ident["noise_predictor"]
    (sd / "unrelated.txt").write_text("not read by invsr")
    assert model_identity(str(sd), str(np_path)) == changed

    assert model_identity(str(tmp_path / "gone"), str(np_path))["sd_model"]["sha256"] is None


def test_hub_identity_is_the_cached_revision_and_never_the_network(tmp_path, monkeypatch, cache_dir):
    """Online or not, identity only looks in huggingface_hub's cache: the commit its refs point to, None when
    nothing is cached."""
    import huggingface_hub.constants as hub_constants

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    cache = tmp_path / "hub"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)

    none = model_identity("stabilityai/sd-turbo", None)
    assert none == {
        "sd_model": {"source": "hub", "repo": "stabilityai/sd-turbo", "revision": None},
        "noise_predictor": {"source": "hub", "repo": "OAOA/InvSR", "file": "noise_predictor_sd_turbo_v5.pth",
                            "revision": None},
    }
    for repo, rel in (("stabilityai/sd-turbo", "unet/config.json"),
                      ("OAOA/InvSR", "noise_predictor_sd_turbo_v5.pth")):
        folder = cache / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(COMMIT)
        (folder / "snapshots" / COMMIT / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / "snapshots" / COMMIT / rel).write_text("{}")
    found = model_identity("stabilityai/sd-turbo", None)
    assert found["sd_model"]["revision"] == COMMIT and found["noise_predictor"]["revision"] == COMMIT
    assert attempts == []
    assert not cache_dir.exists()  # nothing hashed: the commit names the content


# -- end to end: swapping weights makes outputs stale -----------------------------------------------------------


def _records(out: Path) -> list[dict]:
    assert (out / ".invsr-manifest.jsonl").is_file()  # the one plain manifest, every line whole
    return manifest_records(out, strict=True)


@pytest.mark.slow
def test_swapped_weights_make_outputs_stale_under_skip_existing(tmp_path, tiny_models):
    from invsr_cli.engine.testing import build_tiny_models

    other = build_tiny_models(tmp_path / "other", seed=1)
    sd = tmp_path / "sd"
    shutil.copytree(tiny_models.sd_dir, sd)
    np_path = tmp_path / "np.pth"
    shutil.copy2(tiny_models.noise_predictor_path, np_path)
    src = tmp_path / "in"
    src.mkdir()
    imagegen.rgb(src / "a.png", 32, 32)
    out = tmp_path / "out"
    env = {"INVSR_CACHE_DIR": str(tmp_path / "cache")}
    args = ["upscale", src, out, "--sd-model", sd, "--noise-predictor", np_path, "--device", "cpu",
            "--tile", "32", "--overlap", "8", "--posterior", "mean"]

    def upscale() -> tuple[str, np.ndarray]:
        p = invsr(args, env=env)
        assert p.returncode == 0, text(p)
        return text(p), np.asarray(Image.open(out / "a.png"))

    log, first = upscale()
    assert "done" in log
    rec = _records(out)[-1]
    assert rec["models"]["noise_predictor"] == {"source": "local", "path": str(np_path.resolve()),
                                                 "sha256": _sha(np_path)}
    assert rec["models"]["sd_model"]["path"] == str(sd.resolve())

    log, again = upscale()  # the same weights: kept
    assert "skipped" in log and "up to date" in log and "stale" not in log, log
    assert len(_records(out)) == 1

    shutil.copy2(other.noise_predictor_path, np_path)  # another noise predictor under the same name
    log, swapped = upscale()
    assert "is stale" in log and "done" in log, log
    assert _records(out)[-1]["models"]["noise_predictor"]["sha256"] == _sha(np_path)
    assert np.abs(swapped.astype(int) - first.astype(int)).max() > 0  # really recomputed with the new weights

    unet = "unet/diffusion_pytorch_model.safetensors"
    shutil.copy2(other.sd_dir / unet, sd / unet)  # other SD weights in the same folder
    log, _ = upscale()
    assert "is stale" in log and "done" in log, log
    sd_hashes = [r["models"]["sd_model"]["sha256"] for r in _records(out)]
    assert len(sd_hashes) == 3 and sd_hashes[1] != sd_hashes[2]

    log, _ = upscale()  # and with those weights unchanged, skipped again
    assert "up to date" in log and "stale" not in log, log


def test_records_carry_the_identity_of_the_weights_actually_loaded(tmp_path, tiny_engine):
    """Before loading, the runner knows the identity from the settings (here the default Hub ids, not cached:
    revision None); the records name what the loaded engine holds (e.g. the commit a first run fetched)."""
    from invsr_cli.run.discover import discover
    from invsr_cli.run.runner import run_batch, run_fingerprint
    from invsr_cli.settings.settings import FixedPolicy, resolve_settings
    from invsr_cli.work.report import Reporter

    src = tmp_path / "in"
    src.mkdir()
    imagegen.rgb(src / "a.png", 32, 32)
    out = tmp_path / "out"
    settings = resolve_settings(None, {"device": "cpu", "tile": 32, "overlap": 8})
    assert model_identity(settings.sd_model, settings.noise_predictor) != tiny_engine.identity
    found = discover([str(src)], out)
    summary = run_batch(found.jobs, settings, output_dir=out, reporter=Reporter(), handle_signals=False,
                        engine_loader=lambda s: tiny_engine)
    assert summary.processed == 1
    rec = _records(out)[-1]
    assert rec["models"] == tiny_engine.identity
    assert rec["fingerprint"] == run_fingerprint(FixedPolicy(settings), tiny_engine.identity)


def test_unreadable_weights_are_a_load_error_naming_the_file(cache_dir):
    """A file whose reads fail (EIO, even for root: /proc/self/mem at offset 0) -> exit 3 naming it, no traceback."""
    from invsr_cli.base.errors import ModelLoadError

    mem = Path("/proc/self/mem")
    if not mem.is_file():
        pytest.skip("needs Linux /proc")
    with pytest.raises(ModelLoadError, match=r"noise_predictor: cannot read /proc/\d+/mem to hash it: "):
        model_identity("stabilityai/sd-turbo", str(mem))
