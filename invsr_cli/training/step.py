"""One InvSR training iteration: the generator update of the noise predictor through the frozen SD-Turbo UNet and
VAE, the EMA, and the discriminator's hinge update (TRAINING.md sections 4-8).

The frozen parts never change: they have ``requires_grad`` off and are in no optimiser, but the graph runs *through*
the UNet, so the gradient of the x0 losses reaches the predictor via ``z_t`` (reparameterised noise sample). Every
random draw of an iteration (start timesteps, the VAE posterior samples, the predictor's noise) comes from the
trainer's own ``torch.Generator``, whose state a checkpoint saves, so a resumed run continues bit-identically.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from invsr_cli.training.losses import FAKE_CLAMP, gan_generator, hinge_discriminator, l2_latent

__all__ = [
    "TRAIN_TIMESTEPS",
    "LossWeights",
    "Optim",
    "Trainer",
    "sigma_table",
    "ema_decay",
    "warmup_lr",
]

TRAIN_TIMESTEPS = (250, 200, 150, 100)  # per-sample start steps; the models see t - 1
_TERMS = ("l2", "lpips", "gan", "total")


@dataclass(frozen=True)
class LossWeights:
    """The authors' weights (configs/sd-turbo-sr-ldis.yaml); 0 switches a term off (``--no-lpips``, ``--no-gan``)."""

    l2: float = 1.0
    lpips: float = 2.0
    gan: float = 0.1
    gan_after: int = 10_000  # the generator sees the GAN term only for iterations > this (the D warm-up)


@dataclass(frozen=True)
class Optim:
    lr: float = 5e-5
    warmup: int = 2000
    dis_lr: float = 5e-5
    dis_weight_decay: float = 1e-3
    ema_rate: float = 0.999


def sigma_table(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """float32 ``sigma[t] = sqrt((1 - abar_t) / abar_t)`` for t = 0..999 (abar in float64 first)."""
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1.0 - a) / a).sqrt().float()


def ema_decay(iteration: int, rate: float) -> float:
    """The authors' rule: ``min(rate, (1 + n) / (10 + n))`` with n the 1-based iteration."""
    return min(rate, (1.0 + iteration) / (10.0 + iteration))


def warmup_lr(iteration: int, base: float, warmup: int) -> float:
    """The learning rate iteration ``iteration`` (1-based) runs at, as the authors' loop sets it: the constructor's
    full value for iteration 1 (their warm-up is applied *after* each step), then ``(k-1)/warmup * base`` up to
    ``base``."""
    if iteration <= 1 or warmup <= 0:
        return base
    return base * min(1.0, (iteration - 1) / warmup)


class Trainer:
    """Holds the trained predictor (+ EMA, AdamW), the optional discriminator (+ Adam), the frozen SD parts."""

    def __init__(
        self,
        *,
        vae: Any,
        unet: Any,
        noise_predictor: nn.Module,
        prompt_embeds: torch.Tensor,
        alphas_cumprod: torch.Tensor,
        lpips: nn.Module | None = None,
        discriminator: nn.Module | None = None,
        weights: LossWeights = LossWeights(),
        optim: Optim = Optim(),
        seed: int = 123456,
        autocast_dtype: torch.dtype | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        self.vae, self.unet = vae, unet
        self.model = noise_predictor
        self.lpips = lpips if weights.lpips > 0 else None
        self.disc = discriminator if weights.gan > 0 else None
        if weights.lpips > 0 and lpips is None:
            raise ValueError("the LPIPS term needs the latent LPIPS network (or weights.lpips = 0)")
        if weights.gan > 0 and discriminator is None:
            raise ValueError("the GAN term needs the discriminator (or weights.gan = 0)")
        self.weights, self.optim = weights, optim
        self.device = next(unet.parameters()).device
        self.prompt_embeds = prompt_embeds.detach().to(self.device)
        self.sigma = sigma_table(alphas_cumprod).to(self.device)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.latent_factor = 2 ** (len(vae.config.block_out_channels) - 1)  # image pixels per latent pixel
        self.autocast_dtype = autocast_dtype
        for frozen in (vae, unet, self.lpips):
            if frozen is not None:
                frozen.requires_grad_(False).eval()
        if grad_checkpointing and hasattr(unet, "enable_gradient_checkpointing"):
            unet.enable_gradient_checkpointing()
        self.model.requires_grad_(True).train()
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=optim.lr, weight_decay=0.0)
        self.d_opt = None
        if self.disc is not None:
            self.disc.requires_grad_(False).train()
            self.d_opt = torch.optim.Adam(
                self.disc.parameters(), lr=optim.dis_lr, weight_decay=optim.dis_weight_decay
            )
        use_scaler = self.device.type == "cuda" and autocast_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.d_scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self.iteration = 0

    # -- pieces -------------------------------------------------------------------------------------------------

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _randn(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.gen, dtype=torch.float32).to(self.device)

    @torch.no_grad()
    def encode(self, img01: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled VAE posterior *sample* of images in [0, 1] (B,3,H,W) -> (B,4,H/8,W/8), float32; the sample's
        standard normal ``noise`` is drawn from the trainer's generator unless given."""
        vae_dtype = next(self.vae.parameters()).dtype
        with self._autocast():
            dist = self.vae.encode((2.0 * img01 - 1.0).to(self.device, vae_dtype)).latent_dist
        noise = self._randn(dist.mean.shape) if noise is None else noise.to(self.device, torch.float32)
        return (dist.mean.float() + dist.std.float() * noise) * self.scaling_factor

    def draw_timesteps(self, batch: int) -> torch.Tensor:
        idx = torch.randint(len(TRAIN_TIMESTEPS), (batch,), generator=self.gen)
        return (torch.tensor(TRAIN_TIMESTEPS)[idx] - 1).to(self.device)

    def draw(self, batch: int, latent_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Every random number of the generator passes of a *global* batch, on the CPU, in a fixed order: the start
        timesteps ``tt`` (B,), the standard normals (B,4,h,w) of the GT latent's VAE posterior sample ``gt_noise``,
        of the LR latent's ``lq_noise`` and of the predictor's sample ``q_noise``. Each process draws them all (the same numbers) and takes its slice, so the training does not
        depend on how the batch is split into processes and micro-batches."""
        idx = torch.randint(len(TRAIN_TIMESTEPS), (batch,), generator=self.gen)
        shape = (batch, 4, *latent_hw)
        noises = [torch.randn(shape, generator=self.gen, dtype=torch.float32) for _ in range(3)]
        return {"tt": torch.tensor(TRAIN_TIMESTEPS)[idx] - 1, "gt_noise": noises[0], "lq_noise": noises[1],
                "q_noise": noises[2]}

    def forward(self, lq: torch.Tensor, gt_latent: torch.Tensor, *, tt: torch.Tensor | None = None,
                with_gan: bool | None = None, noise: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> dict[str, torch.Tensor]:
        """The generator pass on one micro-batch: LR ``lq`` (B,3,h,w) in [0,1], ``gt_latent`` (B,4,h/2,w/2).
        ``tt`` and ``noise`` (the VAE posterior's and the predictor's standard normals) are drawn from the
        trainer's generator unless given (:meth:`draw`).
        Returns the per-sample loss terms (B,), their weighted sum ``total``, and ``z0``, ``tt`` for the D update."""
        b = lq.shape[0]
        lq = lq.to(self.device, torch.float32)
        gt_latent = gt_latent.to(self.device, torch.float32)
        tt = self.draw_timesteps(b) if tt is None else tt.to(self.device)
        up = F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False)
        z_lq = self.encode(up, None if noise is None else noise[0])
        prompt = self.prompt_embeds.expand(b, -1, -1)
        with self._autocast():
            q = self.model(2.0 * lq - 1.0, tt)
            noise = self._randn(q.mean.shape) if noise is None else noise[1].to(self.device, torch.float32)
            sig = self.sigma[tt].view(b, 1, 1, 1)
            z_t = z_lq + sig * (q.mean.float() + q.std.float() * noise)
            unet_dtype = next(self.unet.parameters()).dtype
            eps = self.unet(
                (z_t / (sig**2 + 1.0).sqrt()).to(unet_dtype), tt, encoder_hidden_states=prompt.to(unet_dtype)
            ).sample.float()
            z0 = z_t - sig * eps
            out = {"l2": l2_latent(z0, gt_latent)}
            zero = torch.zeros(b, device=self.device)
            out["lpips"] = self.lpips(z0, gt_latent).view(-1).float() if self.lpips is not None else zero
            gan_on = self.disc is not None and self.iteration > self.weights.gan_after
            if with_gan is not None:
                gan_on = with_gan and self.disc is not None
            if gan_on:
                out["gan"] = gan_generator(
                    [m.float() for m in self.disc(z0.clamp(-FAKE_CLAMP, FAKE_CLAMP), tt, prompt)]
                )
            else:
                out["gan"] = zero
        w = self.weights
        out["total"] = w.l2 * out["l2"] + w.lpips * out["lpips"] + w.gan * out["gan"]
        out["z0"], out["tt"] = z0.detach(), tt
        return out

    # -- one iteration ------------------------------------------------------------------------------------------

    def step(self, micro_batches: Sequence[tuple], *, procs: Any = None) -> dict[str, float]:
        """One iteration over this process's ``micro_batches``: ``(lq, gt_latent)`` or ``(lq, gt_latent, draws)``
        with ``draws`` the micro-batch's slice of :meth:`draw` (else each pass draws from the generator). The
        generator and the discriminator loss of each micro-batch are divided by their number, and ``procs``
        (:class:`~invsr_cli.training.processes.Processes`) averages the gradients over the processes before each
        optimiser step, so both follow the mean over the global batch (the authors' 4-GPU run: one micro-batch per
        GPU, DDP averaging) whatever the split. The record's losses are means over the global batch."""
        if not micro_batches:
            raise ValueError("an iteration needs at least one micro-batch")
        self.iteration += 1
        n = self.iteration
        lr = warmup_lr(n, self.optim.lr, self.optim.warmup)
        for group in self.opt.param_groups:
            group["lr"] = lr
        accumulate = len(micro_batches)
        self.opt.zero_grad(set_to_none=True)
        sums = torch.zeros(5, dtype=torch.float64)  # l2, lpips, gan, total, samples
        saved = []
        for mb in micro_batches:
            lq, gt = mb[0], mb[1]
            draws = mb[2] if len(mb) > 2 else None
            out = self.forward(lq, gt, tt=None if draws is None else draws["tt"],
                               noise=None if draws is None else (draws["lq_noise"], draws["q_noise"]))
            loss = out["total"].mean() / accumulate
            self.scaler.scale(loss).backward()
            sums += torch.tensor([float(out[k].detach().sum()) for k in _TERMS] + [lq.shape[0]], dtype=torch.float64)
            saved.append((out["z0"], out["tt"], gt))
        if procs is not None:
            procs.mean_grads(self.model)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.update_ema()
        d_sums = self._discriminator_step(saved, procs) if self.disc is not None else torch.zeros(2, dtype=torch.float64)
        if procs is not None:
            both = procs.sum(torch.cat([sums, d_sums]))
            sums, d_sums = both[:5], both[5:]
        count = max(float(sums[4]), 1.0)
        record = {k: float(sums[i]) / count for i, k in enumerate(_TERMS)}
        record["lr"] = lr
        if self.disc is not None:
            record["d_loss"] = float(d_sums[0]) / max(float(d_sums[1]), 1.0)
        return record

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = ema_decay(self.iteration, self.optim.ema_rate)
        for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            e.sub_((1.0 - decay) * (e - p.detach()))

    def _discriminator_step(self, saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                            procs: Any) -> torch.Tensor:
        """The hinge update on the generator pass's micro-batches; returns (sum of per-sample losses, samples)."""
        assert self.disc is not None and self.d_opt is not None
        self.disc.requires_grad_(True)
        self.d_opt.zero_grad(set_to_none=True)
        total, count = 0.0, 0
        try:
            for z0, tt, gt in saved:
                prompt = self.prompt_embeds.expand(z0.shape[0], -1, -1)
                with self._autocast():
                    real = self.disc(gt.to(self.device, torch.float32), tt, prompt)
                    fake = self.disc(z0.clamp(-FAKE_CLAMP, FAKE_CLAMP), tt, prompt)
                    per = hinge_discriminator([r.float() for r in real], [f.float() for f in fake])
                self.d_scaler.scale(per.mean() / len(saved)).backward()
                total += float(per.detach().sum())
                count += z0.shape[0]
            if procs is not None:
                procs.mean_grads(self.disc)
            self.d_scaler.step(self.d_opt)
            self.d_scaler.update()
        finally:
            self.disc.requires_grad_(False)
        return torch.tensor([total, count], dtype=torch.float64)

    # -- state --------------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        st: dict[str, Any] = {
            "iters_start": self.iteration,
            "state_dict": self.model.state_dict(),
            "ema_state_dict": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "amp_scaler": self.scaler.state_dict(),
            "generator": self.gen.get_state(),
        }
        if self.disc is not None:
            st["state_dict_dis"] = self.disc.state_dict()
            st["optimizer_dis"] = self.d_opt.state_dict()
            st["amp_scaler_dis"] = self.d_scaler.state_dict()
        return st

    def load_state(self, st: dict[str, Any]) -> None:
        self.iteration = int(st["iters_start"])
        self.model.load_state_dict(st["state_dict"], strict=True)
        self.ema.load_state_dict(st["ema_state_dict"], strict=True)
        self.opt.load_state_dict(st["optimizer"])
        _load_scaler(self.scaler, st["amp_scaler"])
        self.gen.set_state(st["generator"])
        if self.disc is not None:
            if "state_dict_dis" not in st:
                raise ValueError("the checkpoint has no discriminator state (it was trained with --no-gan)")
            self.disc.load_state_dict(st["state_dict_dis"], strict=True)
            self.d_opt.load_state_dict(st["optimizer_dis"])
            _load_scaler(self.d_scaler, st["amp_scaler_dis"])



def _load_scaler(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
    """A GradScaler's state; a disabled scaler's (empty: an fp32/bf16 checkpoint) leaves an enabled one fresh."""
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)
