"""The InvSR diffusion engine: what a program needs to load and run it.

Nothing heavy is imported here: names are re-exported lazily (torch/diffusers load on first use).
The engine never imports the CLI, settings, the runner or image I/O. Modules:

* ``weights``: where the weights are (one ``resolve`` for loading, ``models download`` and ``models info``);
* ``identity``: what the weights are, cheaply (manifests); ``loading``: strict loading of every component;
* ``devices``: device and dtype choice; ``noise_predictor``, ``sampler``, ``colorfix``: the models and the steps.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_LAZY = {
    "InvSREngine": "invsr_cli.engine.sampler",
    "DEFAULT_SD_MODEL": "invsr_cli.engine.weights",
    "DEFAULT_NOISE_PREDICTOR": "invsr_cli.engine.weights",
    "download_models": "invsr_cli.engine.weights",
    "models_info": "invsr_cli.engine.weights",
    "model_identity": "invsr_cli.engine.identity",
    "resolve_device": "invsr_cli.engine.devices",
}

__all__ = [
    "InvSREngine",
    "DEFAULT_SD_MODEL",
    "DEFAULT_NOISE_PREDICTOR",
    "download_models",
    "models_info",
    "model_identity",
    "resolve_device",
]
assert set(__all__) == set(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from invsr_cli.engine.devices import resolve_device
    from invsr_cli.engine.identity import model_identity
    from invsr_cli.engine.sampler import InvSREngine
    from invsr_cli.engine.weights import (
        DEFAULT_NOISE_PREDICTOR,
        DEFAULT_SD_MODEL,
        download_models,
        models_info,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'invsr_cli.engine' has no attribute {name!r}")
    return getattr(import_module(module), name)
