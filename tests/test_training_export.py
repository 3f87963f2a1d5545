"""`invsr train export`: the EMA weights as safetensors with the provenance record, loaded by the upscaler's own
loader (strict keys) and upscaling; the EMA .pth loads in the engine with and without DDP/compile prefixes."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from invsr_cli.base.errors import InputError, ModelLoadError
from invsr_cli.commands.cli import app
from invsr_cli.engine.sampler import InvSREngine
from invsr_cli.training.export import export_ema, read_export_record
from invsr_cli.training.run import run_training
from tests.harness import temps
from tests.training_kit import images, options


@pytest.fixture(scope="module")
def run_dir(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    out = root / "run"
    run_training(options(tiny_models, images(root / "hr"), out, iterations=2, save_every=1))
    return out


def test_export_loads_in_the_engine_and_upscales(tiny_models, run_dir, tmp_path):
    result = CliRunner().invoke(app, ["train", "export", str(run_dir), str(tmp_path / "m.safetensors"), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["iteration"] == 2 and doc["bytes"] == (tmp_path / "m.safetensors").stat().st_size
    record = read_export_record(tmp_path / "m.safetensors")
    assert record == doc["record"]
    assert record["kind"] == "noise_predictor" and record["iteration"] == 2 and record["training_images"] == 3
    assert record["training"]["lr"] == 1e-4 and record["training"]["batch"] == 2
    assert record["models"]["init"]["source"] == "local" and len(record["models"]["init"]["sha256"]) == 64
    assert str(tmp_path) not in json.dumps(record) and str(run_dir) not in json.dumps(record)  # no paths
    ema = torch.load(run_dir / "ema_ckpts" / "ema_model_2.pth", weights_only=True)
    export_ema(run_dir, tmp_path / "m1.safetensors", iteration=1)
    engines = {}
    for name in ("m.safetensors", "m1.safetensors"):
        engines[name] = InvSREngine.load(tiny_models.sd_dir, tmp_path / name, device="cpu", dtype="fp32")
    sd = engines["m.safetensors"].noise_predictor.state_dict()
    assert sd.keys() == ema.keys() and all(torch.equal(sd[k], ema[k]) for k in ema)
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a, b = (engines[n].upscale(lr, steps=1, seed=0) for n in engines)
    assert a.shape == (1, 3, 64, 64) and torch.isfinite(a).all() and not torch.equal(a, b)
    assert not temps(tmp_path)
    # the same run exports the same record and tensors (no timestamps, no paths)
    from safetensors.torch import load_file

    export_ema(run_dir, tmp_path / "again.safetensors")
    assert read_export_record(tmp_path / "again.safetensors") == record
    again, first = load_file(tmp_path / "again.safetensors"), load_file(tmp_path / "m.safetensors")
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)


def test_export_refusals(run_dir, tmp_path):
    with pytest.raises(InputError, match="no EMA checkpoint of iteration 7; there are: 1, 2"):
        export_ema(run_dir, tmp_path / "x.safetensors", iteration=7)
    with pytest.raises(InputError, match="no EMA checkpoint"):
        export_ema(tmp_path, tmp_path / "x.safetensors")
    with pytest.raises(Exception, match="FILE.safetensors"):
        export_ema(run_dir, tmp_path / "x.pth")
    assert not list(tmp_path.iterdir())


def test_ema_checkpoint_loads_in_the_engine_with_or_without_prefixes(tiny_models, run_dir, tmp_path):
    ema = torch.load(run_dir / "ema_ckpts" / "ema_model_2.pth", weights_only=True)
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    outs = []
    for prefix in ("", "module.", "_orig_mod.", "module._orig_mod."):
        path = tmp_path / f"ema_{prefix or 'bare'}.pth"
        torch.save({prefix + k: v for k, v in ema.items()}, path)
        engine = InvSREngine.load(tiny_models.sd_dir, path, device="cpu", dtype="fp32")
        outs.append(engine.upscale(lr, steps=1, seed=0))
    assert all(torch.equal(outs[0], o) for o in outs[1:]) and torch.isfinite(outs[0]).all()
    torch.save({k: v for k, v in list(ema.items())[1:]}, tmp_path / "short.pth")  # a key missing: refused
    with pytest.raises(ModelLoadError, match="missing keys"):
        InvSREngine.load(tiny_models.sd_dir, tmp_path / "short.pth", device="cpu", dtype="fp32")
