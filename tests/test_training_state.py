"""The checkpoint holds the discriminator's state (weights, Adam moments, scaler) and a trainer restored from it
continues exactly: generator, EMA and discriminator bit-identical to an uninterrupted trainer (CPU, fixed seeds)."""

from __future__ import annotations

import io

import torch

from invsr_cli.engine.loading import load_components
from invsr_cli.training.setup import random_discriminator, tiny_discriminator_config, trainer_from_components
from invsr_cli.training.step import LossWeights, Optim


def _trainer(tiny_models):
    comps = load_components(tiny_models.sd_dir, tiny_models.noise_predictor_path, device="cpu", dtype="fp32")
    disc = random_discriminator(tiny_discriminator_config(), seed=3)
    return trainer_from_components(comps, lpips=None, discriminator=disc, weights=LossWeights(lpips=0.0, gan_after=1),
                                   optim=Optim(lr=1e-4, warmup=1, dis_lr=1e-3), seed=9)


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(1, 3, 16, 16, generator=g), torch.randn(1, 4, 8, 8, generator=g))]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_discriminator_state_is_saved_and_resumes(tiny_models):
    a = _trainer(tiny_models)
    for i in range(3):
        rec = a.step(_batch(i))
    assert rec["gan"] != 0.0 and rec["d_loss"] > 0  # iteration 3 > gan_after: the GAN term reached the predictor

    b = _trainer(tiny_models)
    b.step(_batch(0))
    buf = io.BytesIO()
    torch.save(b.state(), buf)  # as the run folder's ckpts/model_N.pth
    st = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    assert {"state_dict_dis", "optimizer_dis", "amp_scaler_dis"} <= st.keys()
    assert st["optimizer_dis"]["state"]  # Adam's moments, not only the weights

    c = _trainer(tiny_models)
    c.load_state(st)
    assert _same(c.disc.state_dict(), b.disc.state_dict())
    for i in (1, 2):
        c.step(_batch(i))
    assert _same(c.model.state_dict(), a.model.state_dict())
    assert _same(c.ema.state_dict(), a.ema.state_dict())
    assert _same(c.disc.state_dict(), a.disc.state_dict())
