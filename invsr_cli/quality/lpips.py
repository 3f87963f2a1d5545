"""LPIPS with the VGG16 backbone and the v0.1 linear heads (Zhang et al. 2018), as pyiqa's ``lpips-vgg``.

A small torch module of our own: the ``lpips`` package and pyiqa both import torchvision, whose registry build
does not import beside the torch used here. The arithmetic is pyiqa's ``LPIPS(net="vgg", version="0.1")`` in
eval mode with ``normalize=True``:

1. inputs RGB in [0, 1] -> ``2x - 1``, then the scaling layer ``(x - shift) / scale`` with shift
   ``(-0.030, -0.088, -0.188)`` and scale ``(0.458, 0.448, 0.450)``;
2. VGG16 ``features`` (torchvision's layer indices) tapped after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3;
3. each tap unit-normalised over channels (``x / (||x|| + 1e-10)``), the squared difference weighted by the
   layer's 1x1 linear head (no bias; dropout is inactive in eval mode), averaged over space;
4. the five layer values summed: one distance per image (0 for identical images; lower is better).

Weights (never fetched at import or test time): torchvision's ImageNet VGG16 (``vgg16-397923af.pth``) and the
LPIPS v0.1 VGG heads (``lpips_v0.1_vgg.pth``, from the authors' repository), both in torch's hub cache
(``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``, where torchvision, lpips and pyiqa
users already have the VGG16 file). ``invsr models download --lpips`` fetches them (:func:`download_lpips`).

API::

    load_lpips(device="cpu") -> LPIPSVGG          # from the cache; WeightsUnavailableError names the command
    load_lpips_from(vgg_path, heads_path, device)  # strict: a missing, unexpected or mismatched key is refused
    model(x, y) -> (B,) distances                  # x, y: (B, 3, H, W) float in [0, 1]
    lpips_paths() -> (vgg_path, heads_path)        # where the cache keeps them
    download_lpips() -> (vgg_path, heads_path)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invsr_cli.base.errors import ModelLoadError, WeightsUnavailableError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DOWNLOAD_COMMAND",
    "HEADS_FILE",
    "HEADS_URL",
    "VGG_FILE",
    "VGG_URL",
    "download_lpips",
    "expected_keys",
    "load_lpips",
    "load_lpips_from",
    "lpips_paths",
]

VGG_FILE = "vgg16-397923af.pth"
VGG_URL = f"https://download.pytorch.org/models/{VGG_FILE}"
HEADS_FILE = "lpips_v0.1_vgg.pth"
HEADS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
DOWNLOAD_COMMAND = "invsr models download --lpips"

# VGG16 "features": (index, in, out) of each 3x3 conv (each followed by a ReLU); max-pools at 4, 9, 16, 23.
_CONVS = (
    (0, 3, 64), (2, 64, 64),
    (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256),
    (17, 256, 512), (19, 512, 512), (21, 512, 512),
    (24, 512, 512), (26, 512, 512), (28, 512, 512),
)  # fmt: skip
_POOLS = (4, 9, 16, 23)
_TAPS = (3, 8, 15, 22, 29)  # the ReLU after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def expected_keys() -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """The keys and shapes each file must hold: (VGG16 features, LPIPS heads). The VGG16 file's ``classifier.*``
    entries (the ImageNet classifier) are expected too and ignored."""
    vgg: dict[str, tuple[int, ...]] = {}
    for i, cin, cout in _CONVS:
        vgg[f"features.{i}.weight"] = (cout, cin, 3, 3)
        vgg[f"features.{i}.bias"] = (cout,)
    heads = {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(_CHANNELS)}
    return vgg, heads


def lpips_paths() -> tuple[Path, Path]:
    """Where torch's hub cache keeps the two files (they may not exist)."""
    import torch.hub

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return folder / VGG_FILE, folder / HEADS_FILE


def _module() -> Any:
    import torch
    from torch import nn

    class LPIPSVGG(nn.Module):
        """LPIPS-VGG v0.1 (see the module docstring). ``forward(x, y) -> (B,)`` for x, y in [0, 1]."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            convs = {i: (cin, cout) for i, cin, cout in _CONVS}
            for i in range(_TAPS[-1] + 1):
                if i in convs:
                    layers.append(nn.Conv2d(*convs[i], kernel_size=3, padding=1))
                elif i in _POOLS:
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                else:
                    layers.append(nn.ReLU(inplace=False))
            self.features = nn.Sequential(*layers)
            self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _CHANNELS)
            self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

        def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
            out = []
            for i, layer in enumerate(self.features):
                x = layer(x)
                if i in _TAPS:
                    out.append(x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + 1e-10))
            return out

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            fx = self._taps(((2 * x - 1) - self.shift) / self.scale)
            fy = self._taps(((2 * y - 1) - self.shift) / self.scale)
            total = x.new_zeros(x.shape[0])
            for head, a, b in zip(self.heads, fx, fy, strict=True):
                total = total + head((a - b) ** 2).mean(dim=(1, 2, 3))
            return total

    return LPIPSVGG


def _read(path: Path, what: str) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable or unsafe file is one clear error
        raise ModelLoadError(f"LPIPS {what} {path}: cannot be read as a tensor mapping ({exc})") from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"LPIPS {what} {path}: not a state dict")
    return state


def _check(state: dict[str, Any], expected: dict[str, tuple[int, ...]], path: Path, what: str, extra: str | None) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not (extra and k.startswith(extra))]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]  # fmt: skip
    problems = [f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(unexpected)}" if unexpected else "",
                f"mismatched {', '.join(wrong)}" if wrong else ""]  # fmt: skip
    problems = [p for p in problems if p]
    if problems:
        raise ModelLoadError(f"LPIPS {what} {path}: {'; '.join(problems)}")


def load_lpips_from(vgg_path: str | os.PathLike[str], heads_path: str | os.PathLike[str], device: Any = "cpu") -> Any:
    """Build LPIPS-VGG from the two files, strictly (every key present, none unknown, every shape right)."""
    vgg_path, heads_path = Path(vgg_path), Path(heads_path)
    vgg_keys, head_keys = expected_keys()
    vgg = _read(vgg_path, "VGG16 weights")
    _check(vgg, vgg_keys, vgg_path, "VGG16 weights", extra="classifier.")
    heads = _read(heads_path, "heads")
    _check(heads, head_keys, heads_path, "heads", extra=None)
    model = _module()()
    state = {k: v for k, v in vgg.items() if k in vgg_keys}
    state.update({f"heads.{k}.weight": heads[f"lin{k}.model.1.weight"] for k in range(len(_CHANNELS))})
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False)
    return model.eval().to(device)


def load_lpips(device: Any = "cpu") -> Any:
    """LPIPS-VGG from torch's hub cache; :class:`WeightsUnavailableError` naming the command when absent."""
    vgg_path, heads_path = lpips_paths()
    missing = [str(p) for p in (vgg_path, heads_path) if not p.is_file()]
    if missing:
        raise WeightsUnavailableError(f"LPIPS weights not found: {', '.join(missing)}; fetch them with `{DOWNLOAD_COMMAND}`")
    return load_lpips_from(vgg_path, heads_path, device)


def download_lpips() -> tuple[Path, Path]:
    """Fetch the two files into torch's hub cache (kept when already there); the VGG16 file is checked
    against the SHA-256 prefix in its name, both are then loaded strictly once."""
    import torch.hub

    vgg_path, heads_path = lpips_paths()
    vgg_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not vgg_path.is_file():
            torch.hub.download_url_to_file(VGG_URL, str(vgg_path), hash_prefix="397923af", progress=False)
        if not heads_path.is_file():
            torch.hub.download_url_to_file(HEADS_URL, str(heads_path), progress=False)
    except Exception as exc:  # noqa: BLE001 - network errors of every kind
        raise WeightsUnavailableError(f"LPIPS weights could not be downloaded ({exc})") from None
    load_lpips_from(vgg_path, heads_path)
    return vgg_path, heads_path
