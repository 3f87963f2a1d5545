"""One training iteration on tiny random models: gradients only on the predictor, the frozen parts bit-identical,
every loss equal to its formula computed independently; overfitting lowers the loss; the EMA follows the rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from invsr_cli.engine.loading import load_components
from invsr_cli.training.latent_lpips import LatentLPIPS
from invsr_cli.training.setup import random_discriminator, tiny_discriminator_config, trainer_from_components
from invsr_cli.training.step import TRAIN_TIMESTEPS, LossWeights, Optim, ema_decay, sigma_table, warmup_lr


def _lpips(seed: int = 0) -> LatentLPIPS:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LatentLPIPS().requires_grad_(False).eval()


def _trainer(tiny_models, weights=LossWeights(gan_after=0), **kw):
    comps = load_components(tiny_models.sd_dir, tiny_models.noise_predictor_path, device="cpu", dtype="fp32")
    text_encoder = comps.text_encoder
    tr = trainer_from_components(comps, lpips=_lpips(), discriminator=random_discriminator(
        tiny_discriminator_config()), weights=weights, seed=7, **kw)
    return tr, text_encoder


def _batch(seed: int, b: int = 2, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g), torch.randn(b, 4, size // 2, size // 2, generator=g)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


pytestmark = pytest.mark.slow  # a full-size VGG16 LPIPS and the tiny SD stack per step: tens of seconds here


def test_one_step_trains_only_the_predictor(tiny_models):
    tr, text_encoder = _trainer(tiny_models)
    frozen = {"unet": tr.unet, "vae": tr.vae, "text_encoder": text_encoder, "lpips": tr.lpips}
    before = {k: _snapshot(m) for k, m in frozen.items()}
    model_before = _snapshot(tr.model)
    disc_before = _snapshot(tr.disc)
    rec = tr.step([_batch(0)])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.model.parameters() if p.ndim > 1)
    changed = [k for k, v in tr.model.state_dict().items() if not torch.equal(v, model_before[k])]
    assert len(changed) == len(model_before)
    for name, m in frozen.items():
        assert _same(_snapshot(m), before[name]), name
        assert all(p.grad is None and not p.requires_grad for p in m.parameters()), name
    # the discriminator learned in its own update (and the GAN term reached the predictor: gan_after=0)
    assert not _same(_snapshot(tr.disc), disc_before)
    assert not any(p.requires_grad for p in tr.disc.parameters())
    assert rec["gan"] != 0.0 and rec["d_loss"] > 0.0 and rec["lr"] == 5e-5


def test_each_loss_equals_its_formula(tiny_models):
    tr, _ = _trainer(tiny_models)
    lq, gt = _batch(1)
    state = tr.gen.get_state()
    out = tr.forward(lq, gt, with_gan=True)
    # independent recomputation from the same random stream
    g = torch.Generator().manual_seed(0)
    g.set_state(state)
    tt = torch.tensor(TRAIN_TIMESTEPS)[torch.randint(4, (2,), generator=g)] - 1
    assert torch.equal(out["tt"], tt)
    with torch.no_grad():
        up = F.interpolate(lq, size=(64, 64), mode="bicubic", align_corners=False)
        post = tr.vae.encode(up * 2 - 1).latent_dist
        z_lq = (post.mean + post.std * torch.randn(post.mean.shape, generator=g)) * tr.vae.config.scaling_factor
        q = tr.model(lq * 2 - 1, tt)
        abar = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)
        sig = ((1 - abar) / abar).sqrt().float()[tt].view(-1, 1, 1, 1)  # SD-2.x scaled-linear betas
        z_t = z_lq + sig * (q.mean + q.std * torch.randn(q.mean.shape, generator=g))
        eps = tr.unet(z_t / torch.sqrt(sig * sig + 1), tt, encoder_hidden_states=tr.prompt_embeds.repeat(2, 1, 1)).sample
        z0 = z_t - sig * eps
        torch.testing.assert_close(out["z0"], z0, rtol=1e-5, atol=1e-6)
        l2 = torch.stack([((z0[i] - gt[i]) ** 2).sum() / z0[i].numel() for i in range(2)])
        torch.testing.assert_close(out["l2"], l2, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out["lpips"], tr.lpips(z0, gt).flatten(), rtol=1e-5, atol=1e-7)
        logits = tr.disc(z0.clamp(-10, 10), tt, tr.prompt_embeds.repeat(2, 1, 1))
        gan = torch.stack([sum(-m[i].mean() for m in logits) / 4 for i in range(2)])
        torch.testing.assert_close(out["gan"], gan, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out["total"], l2 + 2.0 * out["lpips"] + 0.1 * gan, rtol=1e-5, atol=1e-7)
        real = tr.disc(gt, tt, tr.prompt_embeds.repeat(2, 1, 1))
        hinge = torch.stack([sum(0.5 * ((1 - r[i]).clamp(min=0) + (1 + f[i]).clamp(min=0)).mean()
                                 for r, f in zip(real, logits, strict=True)) / 4 for i in range(2)])
    from invsr_cli.training.losses import hinge_discriminator
    torch.testing.assert_close(hinge_discriminator(real, logits), hinge, rtol=1e-6, atol=1e-7)


def test_sigma_table_and_schedules():
    from invsr_cli.engine.sampler import alphas_cumprod_from_config
    from invsr_cli.engine.testing import SD_TURBO_SCHEDULER_CONFIG

    sig = sigma_table(alphas_cumprod_from_config(SD_TURBO_SCHEDULER_CONFIG))
    # TRAINING.md section 4 (float32 values from the authors' scheduler)
    for t, v in [(249, 0.69321), (199, 0.56929), (149, 0.45382), (99, 0.34167), (49, 0.22300)]:
        assert abs(float(sig[t]) - v) < 6e-6
    assert [warmup_lr(k, 5e-5, 2000) for k in (1, 2, 1001, 2001, 5000)] == pytest.approx([5e-5, 2.5e-8, 2.5e-5, 5e-5, 5e-5], rel=1e-12)
    assert ema_decay(1, 0.999) == 2 / 11 and ema_decay(10**6, 0.999) == 0.999


def test_overfitting_lowers_the_loss_and_ema_follows_the_rule(tiny_models):
    tr, _ = _trainer(tiny_models, weights=LossWeights(gan=0.0, lpips=0.0), optim=Optim(lr=1e-3, warmup=0))
    batch = _batch(3)
    ema = {k: v.clone() for k, v in tr.ema.state_dict().items()}
    first = None
    losses = []
    for n in range(1, 31):
        tr.gen.manual_seed(11)  # the same draws each time: a fixed objective to overfit
        rec = tr.step([batch])
        losses.append(rec["total"])
        d = min(0.999, (1 + n) / (10 + n))
        params = dict(tr.model.named_parameters())
        ema = {k: v - (1 - d) * (v - params[k].detach()) for k, v in ema.items()}
        first = first or rec["total"]
    assert losses[-1] < 0.7 * first, losses
    for k, v in tr.ema.state_dict().items():
        torch.testing.assert_close(v, ema[k], rtol=0, atol=1e-6)
