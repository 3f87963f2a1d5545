"""invsr: batch x4 image super-resolution with InvSR (diffusion inversion on SD-Turbo).

The public API lives here. Nothing heavy is imported at import time: torch, diffusers and friends are
imported on first use, so ``import invsr_cli`` and ``invsr --help`` stay instant.

    >>> from invsr_cli import InvSREngine            # doctest: +SKIP
    >>> engine = InvSREngine.load(device="auto")     # doctest: +SKIP
    >>> hr = engine.upscale(lr, steps=1, seed=0)     # lr: (B,3,h,w) in [0,1]  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from invsr_cli.base.version import __version__

# name -> module that defines it (imported lazily on first attribute access)
_LAZY = {
    "InvSREngine": "invsr_cli.engine.sampler",
    "default_timesteps": "invsr_cli.engine.sampler",
    "Settings": "invsr_cli.settings.settings",
    "resolve_settings": "invsr_cli.settings.settings",
    "load_preset": "invsr_cli.settings.preset_files",
    "plan_tiles": "invsr_cli.geometry.tiling",
    "run_batch": "invsr_cli.run.runner",
    "analyse_image": "invsr_cli.settings.analyse",
    "load_policy": "invsr_cli.settings.preset_files",
    "resolve_policy": "invsr_cli.settings.settings",
    "ImageTask": "invsr_cli.work.process",
    "process_images": "invsr_cli.work.process",
    "run_checks": "invsr_cli.commands.doctor",
    "write_report": "invsr_cli.commands.htmlreport",
    "watch_folder": "invsr_cli.run.watch",
}

__all__ = [
    "__version__",
    "InvSREngine",
    "default_timesteps",
    "Settings",
    "resolve_settings",
    "load_preset",
    "plan_tiles",
    "run_batch",
    "analyse_image",
    "load_policy",
    "resolve_policy",
    "ImageTask",
    "process_images",
    "run_checks",
    "write_report",
    "watch_folder",
]
assert set(__all__) == {"__version__", *_LAZY}

if TYPE_CHECKING:  # pragma: no cover
    from invsr_cli.commands.doctor import run_checks
    from invsr_cli.commands.htmlreport import write_report
    from invsr_cli.engine.sampler import InvSREngine, default_timesteps
    from invsr_cli.geometry.tiling import plan_tiles
    from invsr_cli.run.runner import run_batch
    from invsr_cli.run.watch import watch_folder
    from invsr_cli.settings.analyse import analyse_image
    from invsr_cli.settings.preset_files import load_policy, load_preset
    from invsr_cli.settings.settings import Settings, resolve_policy, resolve_settings
    from invsr_cli.work.process import ImageTask, process_images


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'invsr_cli' has no attribute {name!r}")
    return getattr(import_module(module), name)
