"""Finding weights (local, Hub cache, offline) and strict loading of every component (with accelerate)."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from invsr_cli.base.errors import ConfigError, ModelLoadError, WeightsUnavailableError
from invsr_cli.engine import devices as D
from invsr_cli.engine import weights as W
from invsr_cli.engine.loading import check_loaded, load_components

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hf_env(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline; returns the hub cache folder. huggingface_hub reads HF_HUB_CACHE and
    HF_HUB_OFFLINE when imported (already done in this process), so its constants are set as the environment
    variables would have set them."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture()
def network_attempts(monkeypatch):
    """Records any attempt to open a network connection (there must be none offline)."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    # huggingface_hub fetches an "agent harnesses" registry once per process when it first builds request
    # headers (even with local_files_only=True): forget it was fetched, so any such attempt is seen here.
    import huggingface_hub.constants as hub_constants
    import huggingface_hub.utils._detect_agent as detect_agent

    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_TELEMETRY", False)
    monkeypatch.setattr(detect_agent, "_registry", None)
    return attempts


def _fake_hub_repo(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay files out as huggingface_hub's cache does (refs/main -> snapshots/<commit>/...)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    for rel, src in files.items():
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, snap / rel)
    return snap


def _sd_files(sd_dir: Path) -> dict[str, Path]:
    return {str(p.relative_to(sd_dir)): p for p in sd_dir.rglob("*") if p.is_file()}


# -- environment ---------------------------------------------------------------------------------------------


def test_hub_cache_and_offline_mode_are_huggingface_hubs_own(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert W.hub_cache_dir() == tmp_path / "cache"
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert W.is_offline() is True and W.is_offline(False) is False
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    assert W.is_offline() is False and W.is_offline(True) is True


@pytest.mark.slow
def test_the_environment_sets_them_in_a_fresh_process(tmp_path):
    """What the monkeypatching above stands for: a fresh process (as `invsr` is) reads the variables."""
    import subprocess
    import sys

    code = "from invsr_cli.engine import weights as W; print(W.hub_cache_dir(), W.is_offline())"
    env = {"PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(tmp_path / "home" / "hub"), "True"]


def test_device_and_dtype_resolution():
    dev = D.resolve_device("auto")
    if torch.cuda.is_available():
        assert dev.type == "cuda" and D.resolve_dtype("auto", dev) == torch.float16
    else:
        assert D.resolve_device("cpu") == torch.device("cpu")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            D.resolve_device("cuda")
    cpu = torch.device("cpu")
    assert D.resolve_dtype("auto", cpu) == torch.float32
    assert D.resolve_dtype("fp16", cpu) == torch.float16
    assert D.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert D.resolve_dtype("fp32", cpu) == torch.float32
    with pytest.raises(ConfigError, match="dtype"):
        D.resolve_dtype("int8", cpu)
    with pytest.raises(ConfigError, match="device"):
        D.resolve_device("gpu-please")


# -- weights unavailable ---------------------------------------------------------------------------------------


def test_offline_empty_cache_sd_model(hf_env, network_attempts):
    with pytest.raises(WeightsUnavailableError) as e:
        W.resolve("stabilityai/sd-turbo", fetch=True).require()
    msg = str(e.value)
    for needle in (
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        str(hf_env),
        "offline",
        "invsr models download",
        "HF_HUB_OFFLINE",
    ):
        assert needle in msg, (needle, msg)
    assert network_attempts == []


def test_offline_empty_cache_noise_predictor(hf_env, network_attempts):
    with pytest.raises(WeightsUnavailableError) as e:
        W.resolve(noise_predictor=None, fetch=True).noise_predictor.require()
    msg = str(e.value)
    assert "noise_predictor_sd_turbo_v5.pth" in msg and str(hf_env) in msg and "OAOA/InvSR" in msg
    assert "offline" in msg
    with pytest.raises(WeightsUnavailableError, match="other.pth"):
        W.resolve(noise_predictor="someone/repo:other.pth", fetch=True).noise_predictor.require()
    assert network_attempts == []


def test_engine_load_offline_without_weights_raises_the_specific_error(hf_env, network_attempts):
    from invsr_cli.engine.sampler import InvSREngine

    with pytest.raises(WeightsUnavailableError, match="unet/diffusion_pytorch_model.safetensors"):
        InvSREngine.load(device="cpu")
    assert network_attempts == []


def test_offline_partial_snapshot_names_the_missing_file(hf_env, tiny_models, network_attempts):
    files = _sd_files(tiny_models.sd_dir)
    del files["unet/diffusion_pytorch_model.safetensors"]
    _fake_hub_repo(hf_env, "stabilityai/sd-turbo", files)
    with pytest.raises(WeightsUnavailableError) as e:
        W.resolve("stabilityai/sd-turbo", fetch=True).require()
    msg = str(e.value)
    assert "unet/diffusion_pytorch_model.safetensors" in msg and str(hf_env) in msg
    assert "vae/diffusion_pytorch_model.safetensors" not in msg
    assert network_attempts == []


def test_missing_local_paths(tmp_path, tiny_models):
    with pytest.raises(WeightsUnavailableError, match="no such folder"):
        W.resolve(tmp_path / "nope").sd_model.require()
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        W.resolve(noise_predictor=tmp_path / "nope.pth").noise_predictor.require()
    sd = tmp_path / "sd"
    shutil.copytree(tiny_models.sd_dir, sd)
    (sd / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (sd / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(WeightsUnavailableError) as e:
        W.resolve(sd).sd_model.require()
    assert "vae/diffusion_pytorch_model.safetensors" in str(e.value)
    assert "tokenizer/merges.txt" in str(e.value)
    assert str(sd) in str(e.value)


# -- Hub cache (offline, pre-populated) -----------------------------------------------------------------------


def test_load_from_populated_hub_cache_offline(hf_env, tiny_models, network_attempts):
    snap = _fake_hub_repo(hf_env, "stabilityai/sd-turbo", _sd_files(tiny_models.sd_dir))
    _fake_hub_repo(
        hf_env, "OAOA/InvSR", {"noise_predictor_sd_turbo_v5.pth": tiny_models.noise_predictor_path}
    )
    sd_dir, np_path = W.resolve("stabilityai/sd-turbo", fetch=True).require()
    assert sd_dir == snap
    np_cached = hf_env / "models--OAOA--InvSR" / "snapshots" / COMMIT / "noise_predictor_sd_turbo_v5.pth"
    assert np_path.resolve() == np_cached.resolve()

    comps = load_components(device="cpu", dtype="fp32")
    assert comps.identity == {
        "sd_model": {"source": "hub", "repo": "stabilityai/sd-turbo", "revision": COMMIT},
        "noise_predictor": {"source": "hub", "repo": "OAOA/InvSR", "file": "noise_predictor_sd_turbo_v5.pth",
                            "revision": COMMIT},
    }

    rows = W.models_info()
    assert all(r["present"] for r in rows), rows
    assert all(r["size"] > 0 for r in rows)
    assert {r["where"] for r in rows} >= {str(snap / "unet" / "diffusion_pytorch_model.safetensors"),
                                          str(np_cached)}
    assert W.download_models()["sd_model"] == str(snap)
    assert network_attempts == []


def test_models_info_empty_cache_lists_missing_without_downloading(hf_env, network_attempts):
    rows = W.models_info()
    names = [r["name"] for r in rows]
    assert "stabilityai/sd-turbo/unet/diffusion_pytorch_model.safetensors" in names
    assert "OAOA/InvSR:noise_predictor_sd_turbo_v5.pth" in names
    assert not any(r["present"] for r in rows)
    assert all(str(hf_env) in r["where"] for r in rows)
    assert network_attempts == []
    assert not hf_env.exists() or not any(hf_env.rglob("*.safetensors"))


def test_models_info_local(tiny_models):
    rows = W.models_info(tiny_models.sd_dir, tiny_models.noise_predictor_path)
    np_row = rows[-1]
    assert np_row["present"] and np_row["size"] == tiny_models.noise_predictor_path.stat().st_size
    unet = [r for r in rows if r["name"].endswith("unet/diffusion_pytorch_model.safetensors")][0]
    assert unet["present"]
    assert (
        unet["size"] == (tiny_models.sd_dir / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    )
    assert set(rows[0]) == {"name", "where", "present", "size", "component", "spec", "file", "required", "looked_in"}
    assert all(r["present"] for r in rows), [r for r in rows if not r["present"]]


def test_models_info_lists_exactly_what_loading_reads(tmp_path, tiny_models):
    """One resolve for both: a folder with an fp16 variant and a fast tokenizer is listed with those files, and
    a file loading does not need (vocab.json beside tokenizer.json) is not reported missing."""
    sd = tmp_path / "sd"
    shutil.copytree(tiny_models.sd_dir, sd)
    unet = sd / "unet" / "diffusion_pytorch_model.safetensors"
    unet.rename(unet.with_name("diffusion_pytorch_model.fp16.safetensors"))
    rows = {r["name"]: r for r in W.models_info(sd, tiny_models.noise_predictor_path)}
    assert rows[f"{sd}/unet/diffusion_pytorch_model.fp16.safetensors"]["present"]
    assert f"{sd}/unet/diffusion_pytorch_model.safetensors" not in rows
    assert W.resolve(sd).sd_model.missing == []
    (sd / "tokenizer" / "merges.txt").unlink()
    assert W.resolve(sd).sd_model.missing == ["tokenizer/merges.txt"]
    missing = [r["name"] for r in W.models_info(sd, tiny_models.noise_predictor_path) if not r["present"]]
    assert missing == [f"{sd}/tokenizer/merges.txt"]


# -- strict loading ---------------------------------------------------------------------------------------------


def _weights_path(sd: Path, np_path: Path, component: str) -> Path:
    if component == "noise_predictor":
        return np_path
    name = "model.safetensors" if component == "text_encoder" else "diffusion_pytorch_model.safetensors"
    return sd / component / name


def _corrupt(path: Path, mode: str) -> str:
    """Remove / add / reshape one weight in the file at ``path``; returns the key concerned."""
    state = torch.load(path, weights_only=True) if path.suffix == ".pth" else load_file(str(path))
    key = sorted(k for k in state if k.endswith(".weight"))[-1]
    if mode == "missing":
        del state[key]
    elif mode == "unexpected":
        key = "encoder.extra_block.weight" if path.suffix == ".pth" else "extra_block.weight"
        state[key] = torch.zeros(4, 4)
    elif mode == "mismatched":
        state[key] = torch.zeros(*[d + 1 for d in state[key].shape])
    if path.suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path), metadata={"format": "pt"})
    return key


def test_components_load_through_accelerate_without_random_init(tiny_models, monkeypatch):
    """accelerate is installed and diffusers builds the VAE and UNet under its empty-weights init (no random init,
    every weight from the file); the strictness tests below therefore run with accelerate in the loop."""
    import accelerate
    from diffusers.utils import is_accelerate_available

    assert is_accelerate_available()
    calls = []
    real = accelerate.init_empty_weights

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(accelerate, "init_empty_weights", spy)
    comps = load_components(tiny_models.sd_dir, tiny_models.noise_predictor_path, device="cpu", dtype="fp32")
    assert len(calls) == 2  # the VAE and the UNet
    for model in (comps.vae, comps.unet, comps.text_encoder, comps.noise_predictor):
        assert not any(t.is_meta for t in model.state_dict().values())
    on_disk = load_file(str(tiny_models.sd_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    loaded = comps.unet.state_dict()
    assert set(loaded) == set(on_disk)
    assert all(torch.equal(loaded[k], v) for k, v in on_disk.items())


@pytest.mark.parametrize("mode", ["missing", "unexpected", "mismatched"])
@pytest.mark.parametrize("component", ["text_encoder", "unet", "vae", "noise_predictor"])
def test_incomplete_or_extra_weights_are_refused(tmp_path, tiny_models, component, mode):
    sd = tmp_path / "sd"
    shutil.copytree(tiny_models.sd_dir, sd)
    np_path = tmp_path / "np.pth"
    shutil.copy2(tiny_models.noise_predictor_path, np_path)
    path = _weights_path(sd, np_path, component)
    key = _corrupt(path, mode)
    with pytest.raises(ModelLoadError) as e:
        load_components(sd, np_path, device="cpu", dtype="fp32")
    msg = str(e.value)
    assert msg.startswith(f"{component}:"), msg
    assert str(path) in msg, msg  # the file
    assert key in msg, msg  # and the key
    reason = {"missing": "missing keys", "unexpected": "unexpected keys", "mismatched": "mismatch"}[mode]
    assert reason in msg, msg
    if mode == "mismatched":
        assert "(checkpoint (" in msg and "low_cpu_mem_usage" not in msg, msg  # both shapes, no library advice


def test_text_encoder_saved_with_text_model_prefix_loads_exactly(tmp_path, tiny_models):
    """Older transformers (and the real SD-Turbo files) prefix CLIP text keys with ``text_model.``; they must
    load into every weight, not be silently ignored."""
    sd = tmp_path / "sd"
    shutil.copytree(tiny_models.sd_dir, sd)
    path = sd / "text_encoder" / "model.safetensors"
    state = load_file(str(path))
    prefixed = {f"text_model.{k}": v for k, v in state.items()}
    prefixed["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # old persistent buffer
    save_file(prefixed, str(path), metadata={"format": "pt"})
    comps = load_components(sd, tiny_models.noise_predictor_path, device="cpu", dtype="fp32")
    loaded = comps.text_encoder.state_dict()
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k


def test_silently_dropped_weights_are_caught_by_the_tensor_count(tmp_path, tiny_models):
    """The second check: even if a library reported nothing, file and model must hold the same tensors."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(tiny_models.sd_dir / "vae"))
    path = tmp_path / "w.safetensors"
    save_file({**vae.state_dict(), "ghost.weight": torch.zeros(3)}, str(path))
    with pytest.raises(ModelLoadError, match=f"vae: {path}: .*hold .* tensors"):
        check_loaded("vae", path, vae, {})
    save_file(dict(vae.state_dict()), str(path))
    check_loaded("vae", path, vae, {})  # the same tensors: accepted
    with torch.device("meta"):
        empty = AutoencoderKL.from_config(vae.config)
    with pytest.raises(ModelLoadError, match="weights left unset: decoder"):
        check_loaded("vae", path, empty, {})


def test_scheduler_must_predict_epsilon(tmp_path, tiny_models):
    sd = tmp_path / "sd"
    shutil.copytree(tiny_models.sd_dir, sd)
    cfg = sd / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace('"epsilon"', '"v_prediction"'))
    with pytest.raises(ModelLoadError, match="scheduler: .*v_prediction"):
        load_components(sd, tiny_models.noise_predictor_path, device="cpu", dtype="fp32")


def test_loaded_components_use_sdpa_and_dtypes(tiny_models):
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    comps = load_components(
        tiny_models.sd_dir, tiny_models.noise_predictor_path, device="cpu", dtype="bf16", vae_dtype="fp32"
    )
    for model in (comps.unet, comps.vae, comps.noise_predictor):
        attns = [m for m in model.modules() if isinstance(m, Attention)]
        assert attns and all(isinstance(m.processor, AttnProcessor2_0) for m in attns)
    assert comps.text_encoder.config._attn_implementation == "sdpa"
    assert next(comps.unet.parameters()).dtype == torch.bfloat16
    assert next(comps.text_encoder.parameters()).dtype == torch.bfloat16
    assert next(comps.noise_predictor.parameters()).dtype == torch.bfloat16
    assert next(comps.vae.parameters()).dtype == torch.float32
    assert comps.scheduler.config.timestep_spacing == "trailing"
    assert comps.identity["sd_model"]["source"] == "local"
    assert comps.identity["sd_model"]["path"] == str(tiny_models.sd_dir.resolve())


def test_fetch_failure_online_is_explained(hf_env, monkeypatch):
    """Online, a failed download (network down, repo gone) becomes the same specific error, with the cause."""
    import huggingface_hub
    import huggingface_hub.constants as hub_constants

    def down(*args, **kwargs):
        raise ConnectionError("Temporary failure in name resolution")

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(W, "hub_unreachable", lambda: None)  # the Hub answers; the download itself fails
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", down)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", down)
    with pytest.raises(WeightsUnavailableError) as e:
        W.resolve(fetch=True).noise_predictor.require()
    msg = str(e.value)
    assert "noise_predictor_sd_turbo_v5.pth" in msg and "ConnectionError: Temporary failure" in msg
    assert str(hf_env) in msg and "invsr models download" in msg
    with pytest.raises(
        WeightsUnavailableError, match=r"unet/diffusion_pytorch_model\.safetensors.*ConnectionError"
    ):
        W.resolve("stabilityai/sd-turbo", fetch=True).require()


@pytest.mark.slow
def test_models_info_command_shows_what_loading_would_read(tmp_path, tiny_models):
    """`invsr models info` through the executable: the same resolve as loading, nothing downloaded."""
    from tests.harness import invsr, text

    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "0"}
    p = invsr(["models", "info", "--json", "--sd-model", tiny_models.sd_dir, "--noise-predictor",
               tiny_models.noise_predictor_path], env=env)
    assert p.returncode == 0, text(p)
    rows = json.loads(p.stdout)
    assert rows == W.models_info(tiny_models.sd_dir, tiny_models.noise_predictor_path)
    assert all(r["present"] for r in rows)
    p = invsr(["models", "info"], env=env)  # Hub ids, empty cache, online: listed as missing, not fetched
    assert p.returncode == 3, text(p)  # the exit code says the weights are not there (issue 19, item 8)
    assert "missing" in text(p) and str(tmp_path / "hub") in text(p)
    # a table a person can read: the cache path once per source, not on every file's line
    assert sum(str(tmp_path / "hub") in line for line in text(p).splitlines()) == 2, text(p)
    assert "unet/diffusion_pytorch_model.safetensors  missing" in text(p)
    assert not (tmp_path / "hub").exists() or not any((tmp_path / "hub").rglob("*.safetensors"))
