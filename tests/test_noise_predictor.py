"""The noise predictor: official layout, parameter count, strict and safe checkpoint loading."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from invsr_cli.base.errors import ModelLoadError, UnsafeCheckpointError
from invsr_cli.engine.noise_predictor import (
    NoisePredictor,
    NoisePredictorConfig,
    infer_noise_predictor_config,
    load_noise_predictor,
    load_noise_predictor_state,
)
from invsr_cli.engine.testing import tiny_noise_predictor_config

# ../shared/invsr/noise_predictor_keys.json beside the repository (the official checkpoint's keys and shapes).
KEYS_JSON = Path(
    os.environ.get("INVSR_NP_KEYS")
    or Path(__file__).resolve().parents[2] / "shared" / "invsr" / "noise_predictor_keys.json"
)
# sha256 of json.dumps(sorted(keys_json.items())): pins the official layout even where the JSON is not at hand.
OFFICIAL_LAYOUT_SHA256 = "4ff7159a366c83ea2cea6ac4d41ef0d5240272ed7e2f2410993ddeee23dd285f"


def _layout_hash(shapes: dict[str, list[int]]) -> str:
    return hashlib.sha256(json.dumps(sorted(shapes.items())).encode()).hexdigest()


@pytest.fixture(scope="module")
def official_shapes() -> dict[str, list[int]]:
    if KEYS_JSON.is_file():
        shapes = json.loads(KEYS_JSON.read_text())
    else:  # same layout, pinned by the hash below
        with torch.device("meta"):
            shapes = {k: list(v.shape) for k, v in NoisePredictor().state_dict().items()}
    assert _layout_hash(shapes) == OFFICIAL_LAYOUT_SHA256
    return shapes


@pytest.fixture(scope="module")
def official_state(official_shapes) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the official keys and shapes."""
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=g) for k, shape in official_shapes.items()}


def test_full_size_layout_matches_official_keys_and_shapes(official_shapes):
    with torch.device("meta"):
        model = NoisePredictor()
    state = model.state_dict()
    assert list(state) == list(official_shapes)
    assert {k: list(v.shape) for k, v in state.items()} == official_shapes
    assert all(k.startswith("encoder.") for k in state)


def test_full_size_parameter_count_is_33_84m():
    model = NoisePredictor(NoisePredictorConfig())  # really built, on the CPU
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e6 - 33.84) <= 0.01, n


def _wrap(state: dict[str, torch.Tensor], layout: str) -> dict:
    if layout == "plain":
        return dict(state)
    if layout == "module":
        return {f"module.{k}": v for k, v in state.items()}
    if layout == "orig_mod":
        return {f"_orig_mod.{k}": v for k, v in state.items()}
    if layout == "nested":
        return {"state_dict": dict(state)}
    raise AssertionError(layout)


# safetensors files are flat: a nested {"state_dict": ...} exists only as a pickle
@pytest.mark.parametrize(
    ("layout", "fmt"),
    [(lay, "pth") for lay in ("plain", "module", "orig_mod", "nested")]
    + [(lay, "safetensors") for lay in ("plain", "module", "orig_mod")],
)
def test_strict_load_official_layout(tmp_path, official_state, layout, fmt):
    wrapped = _wrap(official_state, layout)
    path = tmp_path / f"np.{fmt}"
    if fmt == "pth":
        torch.save(wrapped, path)
    else:
        save_file(wrapped, str(path))
    model = load_noise_predictor(path)
    assert model.config == NoisePredictorConfig()
    loaded = model.state_dict()
    assert set(loaded) == set(official_state)
    for k in (
        "encoder.conv_in.weight",
        "encoder.mid_block.attentions.0.to_q.weight",
        "encoder.conv_out.bias",
    ):
        assert torch.equal(loaded[k], official_state[k])
    assert all(not p.requires_grad for p in model.parameters())


def test_missing_key_is_named(tmp_path, official_state):
    state = dict(official_state)
    del state["encoder.mid_block.resnets.1.conv2.bias"]
    torch.save(state, tmp_path / "np.pth")
    with pytest.raises(
        ModelLoadError, match=r"missing keys: encoder\.mid_block\.resnets\.1\.conv2\.bias"
    ) as e:
        load_noise_predictor(tmp_path / "np.pth")
    assert "noise_predictor" in str(e.value)


def test_extra_key_is_named(tmp_path, official_state):
    state = {**official_state, "encoder.extra_layer.weight": torch.zeros(3)}
    save_file(state, str(tmp_path / "np.safetensors"))
    with pytest.raises(ModelLoadError, match=r"unexpected keys: encoder\.extra_layer\.weight"):
        load_noise_predictor(tmp_path / "np.safetensors")


def test_shape_mismatch_is_named(tmp_path, official_state):
    state = {**official_state, "encoder.conv_out.bias": torch.zeros(6)}
    torch.save(state, tmp_path / "np.pth")
    with pytest.raises(ModelLoadError, match=r"encoder\.conv_out\.bias \(checkpoint \(6,\), model \(8,\)\)"):
        load_noise_predictor(tmp_path / "np.pth", config=NoisePredictorConfig())


def test_non_tensor_pickle_is_refused(tmp_path):
    path = tmp_path / "np.pth"
    torch.save({"encoder.conv_in.weight": torch.zeros(1), "note": "hello"}, path)
    with pytest.raises(UnsafeCheckpointError, match="note"):
        load_noise_predictor_state(path)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(UnsafeCheckpointError, match="mapping of tensors"):
        load_noise_predictor_state(path)


class _Payload:
    """Unpickling this calls a function that writes a marker file (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"encoder.conv_in.weight": _Payload(marker)}, f, protocol=2)
    # sanity: a plain unpickle WOULD run the payload (so the test can fail)
    with open(path, "rb") as f:
        pickle.load(f)  # noqa: S301 - deliberate, on our own file
    assert marker.read_text() == "pwned"
    marker.unlink()

    with pytest.raises(UnsafeCheckpointError, match="evil.pth"):
        load_noise_predictor(path)
    assert not marker.exists()

    # the same inside torch.save's zip container
    torch.save({"state_dict": {"w": _Payload(marker)}}, tmp_path / "evil2.pth")
    with pytest.raises(UnsafeCheckpointError, match="evil2.pth"):
        load_noise_predictor_state(tmp_path / "evil2.pth")
    assert not marker.exists()


def test_unreadable_file_is_a_model_load_error(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="junk.safetensors"):
        load_noise_predictor_state(tmp_path / "junk.safetensors")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_noise_predictor_state(tmp_path / "nope.pth")


def test_config_inferred_from_tiny_shapes(tiny_models):
    state = load_noise_predictor_state(tiny_models.noise_predictor_path)
    assert infer_noise_predictor_config(state) == tiny_noise_predictor_config()
    model = load_noise_predictor(tiny_models.noise_predictor_path)
    assert model.config == tiny_noise_predictor_config()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_forward_shapes_and_logvar_clamp():
    torch.manual_seed(0)
    model = NoisePredictor(tiny_noise_predictor_config()).eval()
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        dist = model(x, 199)
        assert dist.mean.shape == (2, 4, 16, 24)
        assert dist.logvar.shape == (2, 4, 16, 24)
        with torch.no_grad():
            model.encoder.conv_out.bias[4:] = 1000.0  # log-variance channels
        assert float(model(x, torch.tensor([199, 199])).logvar.max()) == 20.0
        # per-image timesteps: different t, different output
        d2 = model(x, torch.tensor([10, 900]))
        assert not torch.allclose(d2.mean[0], d2.mean[1])
