"""Finding weights (local, Hub cache, offline) and strict loading of every component."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from invsr_cli.engine import models as M
from invsr_cli.errors import ConfigError, ModelLoadError, WeightsUnavailableError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hf_env(tmp_path, monkeypatch):
    """An empty Hugging Face home, offline; returns the hub cache folder."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


@pytest.fixture()
def network_attempts(monkeypatch):
    """Records any attempt to open a network connection (there must be none offline)."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    # Worst case: huggingface_hub was imported before HF_HUB_OFFLINE was set (it reads it only at import), and
    # has not yet fetched the "agent harnesses" registry it fetches once per process when it first builds
    # request headers (even with local_files_only=True). Any such fetch is then seen here.
    import huggingface_hub.constants as hub_constants
    import huggingface_hub.utils._detect_agent as detect_agent

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
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


def test_hub_cache_dir_follows_environment_at_call_time(tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert M.hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert M.hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert M.hub_cache_dir() == tmp_path / "cache"


def test_offline_flag(monkeypatch):
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert M.is_offline() is True
    assert M.is_offline(False) is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert M.is_offline() is False
    assert M.is_offline(True) is True


def test_device_and_dtype_resolution():
    dev = M.resolve_device("auto")
    if torch.cuda.is_available():
        assert dev.type == "cuda" and M.resolve_dtype("auto", dev) == torch.float16
    else:
        assert M.resolve_device("cpu") == torch.device("cpu")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            M.resolve_device("cuda")
    cpu = torch.device("cpu")
    assert M.resolve_dtype("auto", cpu) == torch.float32
    assert M.resolve_dtype("fp16", cpu) == torch.float16
    assert M.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert M.resolve_dtype("fp32", cpu) == torch.float32
    with pytest.raises(ConfigError, match="dtype"):
        M.resolve_dtype("int8", cpu)
    with pytest.raises(ConfigError, match="device"):
        M.resolve_device("gpu-please")


# -- weights unavailable ---------------------------------------------------------------------------------------


def test_offline_empty_cache_sd_model(hf_env, network_attempts):
    with pytest.raises(WeightsUnavailableError) as e:
        M.resolve_sd_model("stabilityai/sd-turbo")
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
        M.resolve_noise_predictor(None)
    msg = str(e.value)
    assert "noise_predictor_sd_turbo_v5.pth" in msg and str(hf_env) in msg and "OAOA/InvSR" in msg
    with pytest.raises(WeightsUnavailableError, match="other.pth"):
        M.resolve_noise_predictor("someone/repo:other.pth")
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
        M.resolve_sd_model("stabilityai/sd-turbo")
    msg = str(e.value)
    assert "unet/diffusion_pytorch_model.safetensors" in msg and str(hf_env) in msg
    assert "vae/diffusion_pytorch_model.safetensors" not in msg
    assert network_attempts == []


def test_missing_local_paths(tmp_path, tiny_models):
    with pytest.raises(WeightsUnavailableError, match="no such folder"):
        M.resolve_sd_model(tmp_path / "nope")
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        M.resolve_noise_predictor(tmp_path / "nope.pth")
    sd = tmp_path / "sd"
    shutil.copytree(tiny_models.sd_dir, sd)
    (sd / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (sd / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(WeightsUnavailableError) as e:
        M.resolve_sd_model(sd)
    assert "vae/diffusion_pytorch_model.safetensors" in str(e.value)
    assert "tokenizer/merges.txt" in str(e.value)
    assert str(sd) in str(e.value)


# -- Hub cache (offline, pre-populated) -----------------------------------------------------------------------


def test_load_from_populated_hub_cache_offline(hf_env, tiny_models, network_attempts):
    snap = _fake_hub_repo(hf_env, "stabilityai/sd-turbo", _sd_files(tiny_models.sd_dir))
    _fake_hub_repo(
        hf_env, "OAOA/InvSR", {"noise_predictor_sd_turbo_v5.pth": tiny_models.noise_predictor_path}
    )
    assert M.resolve_sd_model("stabilityai/sd-turbo") == snap
    np_cached = hf_env / "models--OAOA--InvSR" / "snapshots" / COMMIT / "noise_predictor_sd_turbo_v5.pth"
    assert M.resolve_noise_predictor().resolve() == np_cached.resolve()

    comps = M.load_components(device="cpu", dtype="fp32")
    assert comps.identity["sd_model"] == "stabilityai/sd-turbo"
    assert comps.identity["sd_model_revision"] == COMMIT
    assert comps.identity["noise_predictor"] == "OAOA/InvSR:noise_predictor_sd_turbo_v5.pth"
    assert len(comps.identity["noise_predictor_sha256"]) == 64

    rows = M.models_info()
    assert all(r["present"] for r in rows), rows
    assert all(r["size"] > 0 for r in rows)
    assert M.download_models()["sd_model"] == str(snap)
    assert network_attempts == []


def test_models_info_empty_cache_lists_missing_without_downloading(hf_env, network_attempts):
    rows = M.models_info()
    names = [r["name"] for r in rows]
    assert "stabilityai/sd-turbo/unet/diffusion_pytorch_model.safetensors" in names
    assert "OAOA/InvSR:noise_predictor_sd_turbo_v5.pth" in names
    assert not any(r["present"] for r in rows)
    assert all(str(hf_env) in r["where"] for r in rows)
    assert network_attempts == []
    assert not hf_env.exists() or not any(hf_env.rglob("*.safetensors"))


def test_models_info_local(tiny_models):
    rows = M.models_info(tiny_models.sd_dir, tiny_models.noise_predictor_path)
    np_row = rows[-1]
    assert np_row["present"] and np_row["size"] == tiny_models.noise_predictor_path.stat().st_size
    unet = [r for r in rows if r["name"].endswith("unet/diffusion_pytorch_model.safetensors")][0]
    assert unet["present"]
    assert (
        unet["size"] == (tiny_models.sd_dir / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    )
    assert set(rows[0]) == {"name", "where", "present", "size"}


# -- strict loading ---------------------------------------------------------------------------------------------


def _corrupt(sd: Path, component: str, mode: str) -> str:
    """Remove / add / reshape one weight of ``component``; returns the key concerned."""
    path = (
        sd
        / component
        / ("model.safetensors" if component == "text_encoder" else "diffusion_pytorch_model.safetensors")
    )
    state = load_file(str(path))
    key = sorted(k for k in state if k.endswith(".weight"))[-1]
    if mode == "missing":
        del state[key]
    elif mode == "unexpected":
        key = "extra_block.weight"
        state[key] = torch.zeros(4, 4)
    elif mode == "mismatched":
        state[key] = torch.zeros(*[d + 1 for d in state[key].shape])
    save_file(state, str(path), metadata={"format": "pt"})
    return key


@pytest.mark.parametrize("mode", ["missing", "unexpected", "mismatched"])
@pytest.mark.parametrize("component", ["text_encoder", "unet", "vae"])
def test_incomplete_or_extra_weights_are_refused(tmp_path, tiny_models, component, mode):
    sd = tmp_path / "sd"
    shutil.copytree(tiny_models.sd_dir, sd)
    key = _corrupt(sd, component, mode)
    with pytest.raises(ModelLoadError) as e:
        M.load_components(sd, tiny_models.noise_predictor_path, device="cpu", dtype="fp32")
    msg = str(e.value)
    assert msg.startswith(f"{component}:"), msg
    assert key in msg, msg


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
    comps = M.load_components(sd, tiny_models.noise_predictor_path, device="cpu", dtype="fp32")
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
    with pytest.raises(ModelLoadError, match="vae: .*hold .* tensors"):
        M._check_loaded("vae", tmp_path, vae, {}, path)
    save_file(dict(vae.state_dict()), str(path))
    M._check_loaded("vae", tmp_path, vae, {}, path)  # the same tensors: accepted


def test_scheduler_must_predict_epsilon(tmp_path, tiny_models):
    sd = tmp_path / "sd"
    shutil.copytree(tiny_models.sd_dir, sd)
    cfg = sd / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace('"epsilon"', '"v_prediction"'))
    with pytest.raises(ModelLoadError, match="scheduler: .*v_prediction"):
        M.load_components(sd, tiny_models.noise_predictor_path, device="cpu", dtype="fp32")


def test_loaded_components_use_sdpa_and_dtypes(tiny_models):
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    comps = M.load_components(
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
    assert comps.identity["sd_model_revision"] == "local"
    assert comps.identity["sd_model_path"] == str(tiny_models.sd_dir.resolve())


def test_fetch_failure_online_is_explained(hf_env, monkeypatch):
    """Online, a failed download (network down, repo gone) becomes the same specific error, with the cause."""
    import huggingface_hub

    def down(*args, **kwargs):
        raise ConnectionError("Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", down)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", down)
    with pytest.raises(WeightsUnavailableError) as e:
        M.resolve_noise_predictor(offline=False)
    msg = str(e.value)
    assert "noise_predictor_sd_turbo_v5.pth" in msg and "ConnectionError: Temporary failure" in msg
    assert str(hf_env) in msg and "invsr models download" in msg
    with pytest.raises(
        WeightsUnavailableError, match=r"unet/diffusion_pytorch_model\.safetensors.*ConnectionError"
    ):
        M.resolve_sd_model("stabilityai/sd-turbo", offline=False)
