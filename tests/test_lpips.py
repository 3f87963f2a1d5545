"""LPIPS-VGG: strict loading (random weights through the real loader), zero for identical images, the arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from invsr_cli.base.errors import ModelLoadError, WeightsUnavailableError
from invsr_cli.quality.lpips import DOWNLOAD_COMMAND, expected_keys, load_lpips, load_lpips_from


def _write(tmp: Path, drop: str | None = None, extra: str | None = None, reshape: str | None = None) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    vgg_keys, head_keys = expected_keys()
    vgg = {k: torch.randn(s, generator=g) * 0.05 for k, s in vgg_keys.items()}
    vgg["classifier.0.weight"] = torch.zeros(4, 4)  # the ImageNet classifier rides along in the real file
    heads = {k: torch.rand(s, generator=g) for k, s in head_keys.items()}
    for state in (vgg, heads):
        if drop in state:
            del state[drop]
        if reshape in state:
            state[reshape] = torch.zeros(2, 2)
    if extra:
        heads[extra] = torch.zeros(1)
    torch.save(vgg, tmp / "vgg.pth")
    torch.save(heads, tmp / "heads.pth")
    return tmp / "vgg.pth", tmp / "heads.pth"


def test_identical_is_zero_different_positive_and_batch_independent(tmp_path: Path) -> None:
    model = load_lpips_from(*_write(tmp_path))
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        assert torch.equal(model(x, x), torch.zeros(2))
        d = model(x, y)
        assert d.shape == (2,) and bool((d > 0).all())
        assert torch.allclose(model(x[:1], y[:1]), d[:1], rtol=1e-5, atol=1e-7)
        assert torch.allclose(model(y, x), d, rtol=1e-5, atol=1e-7)  # symmetric


def test_value_is_the_weighted_normalised_feature_distance(tmp_path: Path) -> None:
    """With every head weight 1 the first layer's term is the plain mean squared distance of unit-normalised
    relu1_2 features: checked by hand for the first layer with the later heads zeroed."""
    vgg_path, heads_path = _write(tmp_path)
    heads = torch.load(heads_path, weights_only=True)
    for k in heads:
        heads[k] = torch.zeros_like(heads[k])
    heads["lin0.model.1.weight"] = torch.ones(1, 64, 1, 1)
    torch.save(heads, heads_path)
    model = load_lpips_from(vgg_path, heads_path)
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)

    def relu12(t: torch.Tensor) -> torch.Tensor:
        shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
        scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        f = model.features[:4]((2 * t - 1 - shift) / scale)
        return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)

    with torch.no_grad():
        expected = (relu12(x) - relu12(y)).pow(2).sum(1).mean()
        assert torch.allclose(model(x, y), expected.view(1), rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop": "features.14.bias"}, "missing features.14.bias"),
        ({"drop": "lin3.model.1.weight"}, "missing lin3.model.1.weight"),
        ({"extra": "lin9.model.1.weight"}, "unexpected lin9.model.1.weight"),
        ({"reshape": "features.0.weight"}, r"mismatched features.0.weight \(2, 2\)"),
    ],
)
def test_loader_is_strict(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_lpips_from(*_write(tmp_path, **kwargs))


def test_unreadable_file_refused(tmp_path: Path) -> None:
    vgg, heads = _write(tmp_path)
    heads.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="heads.pth: cannot be read"):
        load_lpips_from(vgg, heads)


def test_missing_weights_name_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match=DOWNLOAD_COMMAND.replace(" ", r"\s")):
        load_lpips()
