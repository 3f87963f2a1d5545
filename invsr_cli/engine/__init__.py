"""The InvSR diffusion engine: noise predictor, model loading, sampler, colour fixes.

Nothing heavy is imported here: names are re-exported lazily (torch/diffusers load on first use).
The engine never imports the CLI, settings, the runner or image I/O.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_LAZY = {
    "InvSREngine": "invsr_cli.engine.sampler",
    "default_timesteps": "invsr_cli.engine.sampler",
    "validate_timesteps": "invsr_cli.engine.sampler",
    "sigmas_for": "invsr_cli.engine.sampler",
    "POSITIVE_PROMPT": "invsr_cli.engine.sampler",
    "NEGATIVE_PROMPT": "invsr_cli.engine.sampler",
    "DEFAULT_SCHEDULES": "invsr_cli.engine.sampler",
    "Components": "invsr_cli.engine.models",
    "DEFAULT_SD_MODEL": "invsr_cli.engine.models",
    "DEFAULT_NP_REPO": "invsr_cli.engine.models",
    "DEFAULT_NP_FILE": "invsr_cli.engine.models",
    "DEFAULT_NOISE_PREDICTOR": "invsr_cli.engine.models",
    "resolve_sd_model": "invsr_cli.engine.models",
    "resolve_noise_predictor": "invsr_cli.engine.models",
    "download_models": "invsr_cli.engine.models",
    "models_info": "invsr_cli.engine.models",
    "load_components": "invsr_cli.engine.models",
    "resolve_device": "invsr_cli.engine.models",
    "resolve_dtype": "invsr_cli.engine.models",
    "NoisePredictor": "invsr_cli.engine.noise_predictor",
    "NoisePredictorConfig": "invsr_cli.engine.noise_predictor",
    "load_noise_predictor": "invsr_cli.engine.noise_predictor",
    "load_noise_predictor_state": "invsr_cli.engine.noise_predictor",
    "apply_color_fix": "invsr_cli.engine.colorfix",
    "COLOR_FIXES": "invsr_cli.engine.colorfix",
}

__all__ = [
    "InvSREngine",
    "default_timesteps",
    "validate_timesteps",
    "sigmas_for",
    "POSITIVE_PROMPT",
    "NEGATIVE_PROMPT",
    "DEFAULT_SCHEDULES",
    "Components",
    "DEFAULT_SD_MODEL",
    "DEFAULT_NP_REPO",
    "DEFAULT_NP_FILE",
    "DEFAULT_NOISE_PREDICTOR",
    "resolve_sd_model",
    "resolve_noise_predictor",
    "download_models",
    "models_info",
    "load_components",
    "resolve_device",
    "resolve_dtype",
    "NoisePredictor",
    "NoisePredictorConfig",
    "load_noise_predictor",
    "load_noise_predictor_state",
    "apply_color_fix",
    "COLOR_FIXES",
]

if TYPE_CHECKING:  # pragma: no cover
    from invsr_cli.engine.colorfix import COLOR_FIXES, apply_color_fix
    from invsr_cli.engine.models import (
        DEFAULT_NOISE_PREDICTOR,
        DEFAULT_NP_FILE,
        DEFAULT_NP_REPO,
        DEFAULT_SD_MODEL,
        Components,
        download_models,
        load_components,
        models_info,
        resolve_device,
        resolve_dtype,
        resolve_noise_predictor,
        resolve_sd_model,
    )
    from invsr_cli.engine.noise_predictor import (
        NoisePredictor,
        NoisePredictorConfig,
        load_noise_predictor,
        load_noise_predictor_state,
    )
    from invsr_cli.engine.sampler import (
        DEFAULT_SCHEDULES,
        NEGATIVE_PROMPT,
        POSITIVE_PROMPT,
        InvSREngine,
        default_timesteps,
        sigmas_for,
        validate_timesteps,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'invsr_cli.engine' has no attribute {name!r}")
    return getattr(import_module(module), name)
