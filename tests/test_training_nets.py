"""The re-implemented latent discriminator and latent LPIPS against the authors' tiny numeric references
(shared/invsr/training/fixtures), loaded strictly; at full size their keys and shapes equal the released files'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from invsr_cli.base.errors import ModelLoadError
from invsr_cli.training.discriminator import DiscriminatorConfig, LatentDiscriminator
from invsr_cli.training.latent_lpips import LatentLPIPS
from invsr_cli.training.losses import gan_generator, hinge_discriminator
from invsr_cli.training.nets import load_discriminator, load_latent_lpips

# copies of shared/invsr/training/{fixtures/*, *_keys.json} (the intermediates file left out)
FACTS = FIX = Path(__file__).resolve().parent / "data" / "training"
pytestmark = pytest.mark.slow  # full-size VGG16 on 64x64 latents in float64: minutes on a loaded 2-core machine


def tiny_disc_config() -> DiscriminatorConfig:
    c = json.loads((FIX / "tiny_discriminator_config.json").read_text())["config"]
    return DiscriminatorConfig(
        block_out_channels=tuple(c["block_out_channels"]),
        layers_per_block=tuple(c["layers_per_block"]),
        attention_heads=tuple(c["attention_head_dim"]),
        norm_num_groups=c["norm_num_groups"],
        cross_attention_dim=c["cross_attention_dim"],
        pool_heads=c["addition_embed_type_num_heads"],
    )


def lpips_state() -> dict[str, torch.Tensor]:
    w = np.load(FIX / "tiny_latent_lpips_weights.npz")
    state = {}
    for k in w.files:
        if k.startswith("code::"):
            name = k[len("code::"):]
            state[name] = torch.from_numpy(w[k].astype(np.float64) * float(w["scale::" + name]))
        elif k.startswith("value::"):
            state[k[len("value::"):]] = torch.from_numpy(w[k])
    return state


# float64: the only float32 islands are the sinusoidal time features and the pooling softmax (both computed in
# float32 by the reference too); what remains is summation-order rounding, ~1e-15 relative per op, far below 1e-9.
# float32: ~1e-7 relative per op through ~40 layers of sums of a few thousand terms -> 1e-4 relative is generous
# and still far below the logits' spread (O(1)).
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-6, 1e-6), (torch.float32, 1e-4, 1e-4)])
def test_discriminator_matches_reference(tmp_path, dtype, rtol, atol):
    sd = torch.load(FIX / "tiny_discriminator.pth", weights_only=True)
    path = tmp_path / "d.pth"
    torch.save({"module." + k: v for k, v in sd.items()}, path)  # DDP prefix stripped by the loader
    model = load_discriminator(path, tiny_disc_config()).to(dtype).eval()
    z = np.load(FIX / "tiny_discriminator_io.npz")
    t = {k: torch.from_numpy(z[k]) for k in z.files}
    suffix = "f64" if dtype == torch.float64 else "f32"
    with torch.no_grad():
        out = model(t["sample"].to(dtype), t["timestep"], t["encoder_hidden_states"].to(dtype))
        fake = model(t["sample_fake"].to(dtype), t["timestep"], t["encoder_hidden_states"].to(dtype))
        scalar = model(t["sample"].to(dtype), 149, t["encoder_hidden_states"].to(dtype))
        odd = model(t["odd_sample"].to(dtype), t["odd_timestep"], t["odd_encoder_hidden_states"].to(dtype))
    for k in range(4):
        np.testing.assert_allclose(out[k].numpy(), z[f"out{k}_{suffix}"], rtol=rtol, atol=atol)
        np.testing.assert_allclose(fake[k].numpy(), z[f"fake_out{k}_f64"], rtol=rtol, atol=atol)
        np.testing.assert_allclose(scalar[k].numpy(), z[f"scalar_t149_out{k}_f64"], rtol=rtol, atol=atol)
        np.testing.assert_allclose(odd[k].numpy(), z[f"odd_out{k}_f64"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(hinge_discriminator(out, fake).numpy(), z["hinge_d_loss_per_sample_f64"],
                               rtol=rtol, atol=atol)
    np.testing.assert_allclose(gan_generator(fake).numpy(), z["generator_gan_loss_per_sample_f64"],
                               rtol=rtol, atol=atol)


def test_discriminator_other_shrink_runs_with_small_head_groups():
    # head counts differing per block and output-head groups min(G, C/4) < G
    cfg = DiscriminatorConfig(block_out_channels=(16, 32, 64), attention_heads=(1, 2, 4), norm_num_groups=8,
                              cross_attention_dim=24, pool_heads=3)
    model = LatentDiscriminator(cfg)
    assert model.out_blocks[3][0].num_groups == 4  # min(8, 16/4)
    outs = model(torch.randn(1, 4, 12, 20), torch.tensor([99]), torch.randn(1, 77, 24))
    assert [tuple(o.shape) for o in outs] == [(1, 1, 3, 5), (1, 1, 6, 10), (1, 1, 12, 20), (1, 1, 12, 20)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_latent_lpips_matches_reference(tmp_path, dtype):
    path = tmp_path / "lpips.pth"
    torch.save({"state_dict": lpips_state()}, path)
    model = load_latent_lpips(path).to(dtype)
    z = np.load(FIX / "tiny_latent_lpips_io.npz")
    t = {k: torch.from_numpy(z[k]).to(dtype) for k in z.files}
    suffix = "f64" if dtype == torch.float64 else "f32"
    # float64: the same operations in the same order as the reference -> equal to rounding (1e-12 relative);
    # float32: 1e-7 per op over sums of <= 4608 products, ~1e-5 relative
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    with torch.no_grad():
        out, per = model(t["in0"], t["in1"], per_layer=True)
        np.testing.assert_allclose(out.numpy(), z[f"out_{suffix}"], rtol=rtol)
        np.testing.assert_allclose(torch.stack(per).numpy(), z[f"per_layer_{suffix}"], rtol=rtol, atol=1e-12)
        if dtype == torch.float64:
            odd, _ = model(t["odd_in0"], t["odd_in1"], per_layer=True)
            np.testing.assert_allclose(odd.numpy(), z["odd_out_f64"], rtol=rtol)
            norm = model(t["norm_in0"], t["norm_in1"], normalize=True)
            np.testing.assert_allclose(norm.numpy(), z["norm_out_f64"], rtol=rtol)
            assert float(model(t["odd_in0"], t["odd_in0"])) == 0.0
            np.testing.assert_allclose((model(t["in0"], t["in1"]).view(-1) * 2.0).numpy(),
                                       z["trainer_llpips_term_f64"], rtol=rtol)
    assert not any(p.requires_grad for p in model.parameters())


def _shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def test_full_size_keys_equal_the_released_files():
    with torch.device("meta"):
        disc = LatentDiscriminator()
        lpips = LatentLPIPS()
    ref = json.loads((FACTS / "discriminator_keys.json").read_text())
    assert _shapes(disc) == ref["keys"]
    assert sum(p.numel() for p in disc.parameters()) == ref["n_params"] == 112_082_532
    ref = json.loads((FACTS / "latent_lpips_keys.json").read_text())
    assert _shapes(lpips) == ref["keys"]
    assert sum(p.numel() for p in lpips.parameters()) == ref["n_params"]


def test_strict_loading_names_the_problem(tmp_path):
    state = lpips_state()
    state.pop("lins.3.model.1.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ModelLoadError, match=r"missing keys: lins\.3\.model\.1\.weight.*unexpected keys: extra"):
        load_latent_lpips(path)
    with pytest.raises(ModelLoadError, match=r"invsr models download --training"):
        load_discriminator(tmp_path / "absent.pth")
