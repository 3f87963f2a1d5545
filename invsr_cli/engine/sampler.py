"""InvSR x4 sampling (METHOD.md, "Sampling"): the engine the rest of invsr calls.

Components (see :class:`invsr_cli.engine.loading.Components`): SD-Turbo's VAE, UNet, CLIP text encoder and tokenizer,
its Euler scheduler config (for the noise levels only) and the InvSR noise predictor.

``InvSREngine.upscale(lr)``:

* ``lr``: ``(B, 3, h, w)`` float in [0, 1] (1e-3 tolerance, then clamped), h and w multiples of 16, any device;
* returns ``(B, 3, 4h, 4w)`` float32 in [0, 1] on the engine's device.

Steps for timesteps ``t_1 > ... > t_S`` (1..1000 scale; every model is evaluated at ``t - 1``), with
``sigma(t) = sqrt((1 - abar[t-1]) / abar[t-1])`` and ``sigma(t_{S+1}) = 0``:

1. ``x_up = bicubic_x4(lr)`` (align_corners False, no antialias, no clamp), mapped to [-1, 1];
2. ``z0 = scaling_factor * sample(VAE.encode(x_up))``;
3. ``eps0 = sample(noise_predictor(lr * 2 - 1, t_1 - 1))``  (B, 4, h/2, w/2);
4. ``z = z0 + sigma(t_1) * eps0``;
5. for each step: ``eps = UNet(z / sqrt(sigma(t_i)^2 + 1), t_i - 1, prompt)``, ``z += (sigma(t_{i+1}) - sigma(t_i)) * eps``
   (classifier-free guidance ``eps_neg + g * (eps_pos - eps_neg)`` when ``guidance > 1``);
6. ``y = VAE.decode(z / scaling_factor)``, ``(y / 2 + 0.5).clamp(0, 1)``; optional colour fix against ``x_up``.

``sample(...)`` draws mean + std * N(0, 1) from a per-image CPU ``torch.Generator`` seeded with ``seed + i`` (or the
i-th of a seed list): first the VAE posterior's noise, then the noise predictor's. An image's result therefore never
depends on the rest of its batch nor on the device's RNG. ``posterior="mean"`` uses both posteriors' means.
The prompt embeddings are computed once per engine (``encode_prompt_calls`` counts text-encoder runs).
Latents are kept in float32 between steps; each model runs in its own dtype.
"""

from __future__ import annotations

import math
import operator
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from invsr_cli.base.errors import ConfigError, InputError, InvalidOutputError
from invsr_cli.engine.devices import resolve_device, resolve_dtype
from invsr_cli.engine.loading import Components, load_components
from invsr_cli.engine.schedules import (
    COLOR_FIXES,
    DEFAULT_SCHEDULES,
    POSTERIORS,
    default_timesteps,
    validate_timesteps,
)
from invsr_cli.engine.weights import DEFAULT_SD_MODEL

__all__ = [
    "POSITIVE_PROMPT",
    "NEGATIVE_PROMPT",
    "DEFAULT_SCHEDULES",
    "default_timesteps",
    "validate_timesteps",
    "sigmas_for",
    "alphas_cumprod_from_config",
    "InvSREngine",
]

POSITIVE_PROMPT = (
    "Cinematic, high-contrast, photo-realistic, 8k, ultra HD, meticulous detailing, hyper sharpness, "
    "perfect without deformations"
)
# sic: no space after "noisy," (as the official code)
NEGATIVE_PROMPT = (
    "Low quality, blurring, jpeg artifacts, deformed, over-smooth, cartoon, noisy,"
    "painting, drawing, sketch, oil painting"
)

SCALE = 4
MULTIPLE = 16
RANGE_TOLERANCE = 1e-3


def alphas_cumprod_from_config(scheduler_config: Any) -> torch.Tensor:
    """abar_k = prod_{j<=k} (1 - beta_j), float64, from the betas of an EulerDiscreteScheduler built from
    ``scheduler_config`` (SD-Turbo: scaled-linear 0.00085..0.012 over 1000 steps). The product is taken in
    float64 (the scheduler's own ``alphas_cumprod`` is float32, off by up to ~1e-6 in sigma)."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(scheduler_config)
    if scheduler.config.get(
        "rescale_betas_zero_snr", False
    ):  # its last abar is patched; keep the scheduler's
        return scheduler.alphas_cumprod.detach().cpu().double()
    return torch.cumprod(1.0 - scheduler.betas.detach().cpu().double(), dim=0)


def sigmas_for(timesteps: Sequence[int], alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """float64 ``[sigma(t_1), ..., sigma(t_S), 0]`` with ``sigma(t) = sqrt((1 - abar[t-1]) / abar[t-1])``."""
    ts = validate_timesteps(timesteps)
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
    if abar.ndim != 1 or abar.numel() < max(ts):
        raise ConfigError(f"alphas_cumprod has {abar.numel()} entries; timesteps need {max(ts)}")
    idx = torch.tensor([t - 1 for t in ts])
    a = abar[idx]
    return torch.cat([((1.0 - a) / a).sqrt(), torch.zeros(1, dtype=torch.float64)])


def _module_dtype(module: Any) -> torch.dtype:
    return next(module.parameters()).dtype


def _module_device(module: Any) -> torch.device:
    return next(module.parameters()).device


class InvSREngine:
    """x4 super-resolution by diffusion inversion on SD-Turbo (see the module docstring for the contract).

    >>> engine = InvSREngine.load(device="auto")        # doctest: +SKIP
    >>> hr = engine.upscale(lr, steps=1, seed=0)        # doctest: +SKIP
    """

    def __init__(self, components: Components, *, prompt_embeds: torch.Tensor | None = None) -> None:
        """``prompt_embeds``: the positive prompt's (1, 77, D) embeddings computed already (``invsr train``
        validates with its trained predictor and frees the text encoder: ``components.text_encoder`` may then be
        None, and guidance > 1, which needs the negative prompt, is refused)."""
        self.components = components
        self.vae = components.vae
        self.unet = components.unet
        self.text_encoder = components.text_encoder
        self.tokenizer = components.tokenizer
        self.noise_predictor = components.noise_predictor
        self._device = _module_device(self.unet)
        self._dtype = _module_dtype(self.unet)
        self._vae_dtype = _module_dtype(self.vae)
        self._np_dtype = _module_dtype(self.noise_predictor)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.alphas_cumprod = alphas_cumprod_from_config(components.scheduler.config)
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self.encode_prompt_calls = 0
        self.load_seconds: float | None = None  # set by load(): finding and loading the weights, wall time
        for m in (self.vae, self.unet, self.text_encoder, self.noise_predictor):
            if m is not None:
                m.requires_grad_(False).eval()
        if prompt_embeds is not None:
            self._prompt_cache["positive"] = prompt_embeds.detach().to(self._device, self._dtype)
        self._prepare_for_device()

    # -- construction ----------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        sd_model: str | os.PathLike = DEFAULT_SD_MODEL,
        noise_predictor: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        vae_fp32: bool = False,
        offline: bool | None = None,
        compile: bool = False,
    ) -> InvSREngine:
        """Find (fetch unless offline) and strictly load SD-Turbo and the noise predictor.

        ``device``: auto (CUDA > MPS > CPU) or a torch device; ``dtype``: auto (fp16 on CUDA/MPS, fp32 on CPU),
        fp32, fp16 or bf16; ``vae_fp32`` keeps the VAE in fp32 (fp16 VAE decodes can overflow);
        ``compile``: ``torch.compile`` the UNet (opt-in; the first calls per shape are slow).
        """
        start = time.perf_counter()
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        components = load_components(
            sd_model,
            noise_predictor,
            device=dev,
            dtype=dt,
            vae_dtype=torch.float32 if vae_fp32 else dt,
            offline=offline,
        )
        engine = cls(components)
        if compile:
            engine.compile()
        engine.load_seconds = time.perf_counter() - start
        return engine

    def _prepare_for_device(self) -> None:
        """Speed hook: channels_last convolutions on CUDA. (``compile()`` below is opt-in.)"""
        if self._device.type == "cuda":
            for m in (self.unet, self.vae, self.noise_predictor):
                m.to(memory_format=torch.channels_last)

    def compile(self, **kwargs: Any) -> None:
        """Opt-in ``torch.compile`` of the UNet (the bulk of the time); kwargs go to ``torch.compile``."""
        self.unet = torch.compile(self.unet, **kwargs)

    # -- properties ------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def vae_dtype(self) -> torch.dtype:
        return self._vae_dtype

    @property
    def identity(self) -> dict[str, Any]:
        """The weights' identity (:func:`invsr_cli.engine.identity.model_identity`); a copy."""
        import copy

        return copy.deepcopy(self.components.identity)

    # -- prompt ----------------------------------------------------------------------------------------------

    def _encode_prompt(self, text: str) -> torch.Tensor:
        if self.text_encoder is None:
            raise ConfigError("this engine was built without a text encoder (fixed prompt embeddings): "
                              "guidance > 1 needs the negative prompt")
        tok = self.tokenizer
        max_len = min(int(tok.model_max_length), int(self.text_encoder.config.max_position_embeddings))
        ids = tok(
            text, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
        ).input_ids
        out = self.text_encoder(ids.to(self._device))
        self.encode_prompt_calls += 1
        return out.last_hidden_state.to(self._dtype)

    def prompt_embeds(self, negative: bool = False) -> torch.Tensor:
        """(1, 77, D) embeddings of the positive (or negative) prompt, computed once and cached."""
        key = "negative" if negative else "positive"
        if key not in self._prompt_cache:
            with torch.inference_mode():
                self._prompt_cache[key] = self._encode_prompt(
                    NEGATIVE_PROMPT if negative else POSITIVE_PROMPT
                )
        return self._prompt_cache[key]

    # -- validation ------------------------------------------------------------------------------------------

    def check_inputs(
        self,
        lr: Any,
        steps: int | None,
        timesteps: Sequence[int] | None,
        seed: int | Sequence[int],
        posterior: str,
        guidance: float,
        color_fix: str | None,
    ) -> tuple[tuple[int, ...], list[int]]:
        """Validate every argument of :meth:`upscale`; returns (timesteps, per-image seeds)."""
        if not isinstance(lr, torch.Tensor):
            raise InputError(f"`lr` must be a torch.Tensor of shape (B,3,h,w), got {type(lr).__name__}")
        if lr.ndim != 4:
            raise InputError(f"`lr` must have shape (B,3,h,w) (4 dimensions), got shape {tuple(lr.shape)}")
        b, c, h, w = lr.shape
        if c != 3:
            raise InputError(
                f"`lr` must have 3 channels (RGB) in dimension 1, got {c} (shape {tuple(lr.shape)})"
            )
        if b < 1:
            raise InputError(f"`lr` must hold at least one image, got shape {tuple(lr.shape)}")
        if h < MULTIPLE or w < MULTIPLE or h % MULTIPLE or w % MULTIPLE:
            raise InputError(
                f"`lr` height and width must be positive multiples of {MULTIPLE}, got {h}x{w} "
                f"(shape {tuple(lr.shape)}); pad the image first"
            )
        if not lr.is_floating_point():
            raise InputError(f"`lr` must be a floating-point tensor in [0, 1], got dtype {lr.dtype}")
        lo, hi = float(lr.min()), float(lr.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InputError("`lr` contains NaN or infinite values")
        if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
            raise InputError(f"`lr` values must be in [0, 1], got min {lo:.4g}, max {hi:.4g}")

        if timesteps is not None and steps is not None:
            ts = validate_timesteps(timesteps)
            if len(ts) != steps:
                raise ConfigError(
                    f"`steps` ({steps}) disagrees with the {len(ts)} `timesteps` given {list(ts)}"
                )
        elif timesteps is not None:
            ts = validate_timesteps(timesteps)
        else:
            ts = default_timesteps(1 if steps is None else steps)

        if posterior not in POSTERIORS:
            raise ConfigError(f"`posterior` must be sample or mean, got {posterior!r}")
        try:
            g = float(guidance)
        except (TypeError, ValueError):
            raise ConfigError(f"`guidance` must be a number >= 1, got {guidance!r}") from None
        if not math.isfinite(g) or g < 1.0:
            raise ConfigError(f"`guidance` must be a number >= 1 (1 = no negative prompt), got {guidance!r}")
        if color_fix not in (None, "none", *COLOR_FIXES):
            raise ConfigError(f"`color_fix` must be one of none, {', '.join(COLOR_FIXES)}, got {color_fix!r}")
        return ts, self._seeds(seed, b)

    @staticmethod
    def _seeds(seed: int | Sequence[int], batch: int) -> list[int]:
        def as_int(s: Any) -> int:
            try:
                if isinstance(s, bool):
                    raise TypeError
                v = operator.index(s)
            except TypeError:
                raise ConfigError(f"`seed` must be an integer or a list of integers, got {s!r}") from None
            if not 0 <= v < 2**63:
                raise ConfigError(f"`seed` values must be in [0, 2**63), got {v}")
            return v

        if isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
            seeds = [as_int(s) for s in seed]
            if len(seeds) != batch:
                raise ConfigError(f"`seed` has {len(seeds)} values for a batch of {batch} images")
            return seeds
        base = as_int(seed)
        return [as_int(base + i) for i in range(batch)]

    # -- sampling --------------------------------------------------------------------------------------------

    def _draw(self, dist: Any, gens: list[torch.Generator] | None) -> torch.Tensor:
        """Mean (``gens`` None) or mean + std * N(0,1) with one CPU generator per image, in float32."""
        mean = dist.mean.float()
        if gens is None:
            return mean
        noise = torch.stack([torch.randn(mean.shape[1:], generator=g, dtype=torch.float32) for g in gens])
        return mean + dist.std.float() * noise.to(mean.device)

    def _eps(self, z_in: torch.Tensor, t: int, guidance: float) -> torch.Tensor:
        b = z_in.shape[0]
        timestep = torch.tensor(t, device=self._device, dtype=torch.long)
        pos = self.prompt_embeds()
        if guidance > 1.0:
            neg = self.prompt_embeds(negative=True)
            embeds = torch.cat([neg.expand(b, -1, -1), pos.expand(b, -1, -1)])
            eps = self.unet(
                torch.cat([z_in, z_in]).to(self._dtype), timestep, encoder_hidden_states=embeds
            ).sample
            eps_neg, eps_pos = eps.float().chunk(2)
            return eps_neg + guidance * (eps_pos - eps_neg)
        return self.unet(
            z_in.to(self._dtype), timestep, encoder_hidden_states=pos.expand(b, -1, -1)
        ).sample.float()

    def clear_prompt_cache(self) -> None:
        """Forget the encoded prompts (the next batch runs the text encoder again)."""
        self._prompt_cache.clear()

    def upscale(
        self,
        lr: torch.Tensor,
        *,
        steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        seed: int | Sequence[int] = 0,
        posterior: str = "sample",
        guidance: float = 1.0,
        color_fix: str | None = None,
        check_finite: bool = True,
    ) -> torch.Tensor:
        """x4 upscale ``lr`` (B,3,h,w) in [0,1] -> (B,3,4h,4w) float32 in [0,1] on the engine's device.

        ``steps`` picks an official schedule (1..5, default 1); ``timesteps`` gives a custom one. ``seed``: int
        (image i uses seed + i) or one int per image. ``posterior``: "sample" or "mean". ``guidance`` > 1 adds the
        negative prompt. ``color_fix``: None, "wavelet", "ycbcr" or "adain". ``check_finite``: NaN/inf in the
        output raises InvalidOutputError naming the images.
        """
        ts, seeds = self.check_inputs(lr, steps, timesteps, seed, posterior, guidance, color_fix)
        sigmas = [float(s) for s in sigmas_for(ts, self.alphas_cumprod)]
        guidance = float(guidance)
        with torch.inference_mode():
            lr = lr.to(device=self._device, dtype=torch.float32).clamp(0.0, 1.0)
            gens = None
            if posterior == "sample":
                gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]

            # 1. bicubic x4, to [-1, 1]
            x_up = F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False, antialias=False)
            # 2. VAE posterior of the upsampled image
            z0 = self.scaling_factor * self._draw(
                self.vae.encode(x_up.mul(2.0).sub(1.0).to(self._vae_dtype)).latent_dist, gens
            )
            # 3. start noise from the noise predictor at t_1 - 1 (LR input in [-1, 1])
            t1 = torch.tensor(ts[0] - 1, device=self._device, dtype=torch.long)
            eps0 = self._draw(self.noise_predictor(lr.mul(2.0).sub(1.0).to(self._np_dtype), t1), gens)
            # 4. inversion: start latent
            z = z0 + sigmas[0] * eps0
            # 5. Euler steps
            for i, t in enumerate(ts):
                z_in = z / math.sqrt(sigmas[i] ** 2 + 1.0)
                eps = self._eps(z_in, t - 1, guidance)
                z = z + (sigmas[i + 1] - sigmas[i]) * eps
            # 6. decode
            y = self.vae.decode((z / self.scaling_factor).to(self._vae_dtype)).sample.float()
            if check_finite:
                bad = (~torch.isfinite(y)).flatten(1).any(dim=1)
                if bool(bad.any()):
                    idx = [int(i) for i in torch.nonzero(bad).flatten()]
                    raise InvalidOutputError(
                        f"the model produced NaN/inf for batch element(s) {idx} (dtype {self._dtype}, "
                        f"VAE {self._vae_dtype}); try vae_fp32=True or dtype fp32"
                    )
            out = (y / 2.0 + 0.5).clamp(0.0, 1.0)
            if color_fix not in (None, "none"):
                from invsr_cli.engine.colorfix import apply_color_fix

                out = apply_color_fix(color_fix, out, x_up.clamp(0.0, 1.0))
        # A normal (non-inference) tensor, so callers may modify it in place outside inference mode.
        return out.clone()
