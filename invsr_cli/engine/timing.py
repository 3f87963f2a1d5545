"""Per-stage wall time of an engine's components (noise predictor, VAE encoder, UNet, VAE decoder, text encoder),
from forward hooks, plus explicit blocks (``stage("blend")``). CUDA is synchronised at each boundary, so the
figures are real device time; that costs a little, so timers are attached only when asked for (``invsr bench``,
``invsr upscale -v``).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

__all__ = ["STAGES", "StageTimer"]

STAGES = ("noise_predictor", "vae_encode", "unet", "vae_decode", "text_encoder", "blend")


class StageTimer:
    """Per-stage seconds and call counts, from forward hooks on the engine's components and explicit blocks."""

    def __init__(self, device: Any) -> None:
        import torch

        self._torch = torch
        self._cuda = str(device).startswith("cuda")
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._start: dict[str, float] = {}
        self._handles: list[Any] = []

    def sync(self) -> None:
        if self._cuda:
            self._torch.cuda.synchronize()

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def _begin(self, name: str) -> None:
        self.sync()
        self._start[name] = time.perf_counter()

    def _end(self, name: str) -> None:
        self.sync()
        self.seconds[name] += time.perf_counter() - self._start.pop(name)
        self.calls[name] += 1

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._begin(name)
        try:
            yield
        finally:
            self._end(name)

    def attach(self, engine: Any) -> None:
        """Hook the components the engine calls (the VAE's encoder and decoder halves: ``encode``/``decode`` are
        methods, not forwards; their quant convs are 1x1 and left out)."""
        modules = {
            "noise_predictor": engine.noise_predictor,
            "vae_encode": engine.vae.encoder,
            "unet": engine.unet,
            "vae_decode": engine.vae.decoder,
            "text_encoder": engine.text_encoder,
        }
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(lambda m, a, n=name: self._begin(n)))
            self._handles.append(module.register_forward_hook(lambda m, a, o, n=name: self._end(n)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
