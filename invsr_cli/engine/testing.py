"""Random-weight model builders for tests and benchmarks (never downloads anything).

* :func:`build_tiny_models` writes a TINY SD-Turbo-like diffusers folder and a tiny noise predictor checkpoint in the
  same on-disk layouts as the real ones, so tests load them through the real loading code
  (:func:`invsr_cli.engine.loading.load_components`). Building and loading take about a second; a 1-step upscale of
  a 32x32 LR image a fraction of a second on a CPU.
* :func:`build_full_size_components` builds the FULL SD-Turbo (SD 2.1) architectures and the official-size noise
  predictor in memory with random weights, for benchmarks (about 1.3 G parameters: slow to build, never used by the
  default tests); :func:`save_full_size_models` writes them to disk in the real layouts (load-time measurements).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from invsr_cli.engine.loading import Components

__all__ = [
    "TinyModels",
    "build_tiny_models",
    "build_full_size_components",
    "save_full_size_models",
    "tiny_noise_predictor_config",
    "SD_TURBO_SCHEDULER_CONFIG",
]

# SD-Turbo's scheduler/scheduler_config.json (EulerDiscreteScheduler, epsilon prediction, scaled-linear betas).
SD_TURBO_SCHEDULER_CONFIG: dict = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "timestep_type": "discrete",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

_TINY_CLIP_HIDDEN = 32


def tiny_noise_predictor_config():
    from invsr_cli.engine.noise_predictor import NoisePredictorConfig

    # Channels >= the official head dim (64) and divisible by the official 32 norm groups, so the loader's
    # shape inference (official defaults for what shapes don't tell) rebuilds exactly this architecture.
    return NoisePredictorConfig(block_out_channels=(64, 128), layers_per_block=1, temb_channels=128)


@dataclass(frozen=True)
class TinyModels:
    """Where :func:`build_tiny_models` wrote its files."""

    root: Path
    sd_dir: Path
    noise_predictor_path: Path


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: the 256 characters byte-level BPE works on."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _write_tokenizer(folder: Path) -> int:
    """A small CLIP BPE vocabulary (every byte alone and word-final, a few merges); returns the vocab size.

    Any text tokenizes without unknown tokens; the prompts come out as (mostly) characters, truncated to 77.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = ["i n", "t h", "th e</w>", "e r", "a r", "in g</w>", "o n", "r e"]
    for merge in merges:
        a, b = merge.split()
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "!",  # as SD 2.x / SD-Turbo
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return len(vocab)


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,  # 8x downsampling like SD's VAE
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=128,
        scaling_factor=0.18215,
    )


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=32,
        cross_attention_dim=_TINY_CLIP_HIDDEN,
        attention_head_dim=(2, 4),
        use_linear_projection=True,  # as SD 2.x
    )


def _tiny_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=_TINY_CLIP_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=16,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=0,
    )
    return CLIPTextModel(cfg)


def build_tiny_models(root: Path, seed: int = 0) -> TinyModels:
    """Write a tiny SD-Turbo-like diffusers folder (``root/sd``) and a tiny noise predictor
    (``root/noise_predictor.pth``, official key layout) with random weights drawn from ``seed``.

    Sizes: VAE 4 blocks (8, 16, 32, 32) channels, 1 layer each (x8 down/up-sampling, 4 latent channels); UNet
    (32, 64) channels with cross-attention on a 32-wide CLIP text model (2 layers, 4 heads, 77 positions);
    noise predictor (64, 128) channels, 1 layer per block, one downsample (output at LR/2 = HR/8).
    """
    import torch
    from diffusers import EulerDiscreteScheduler

    from invsr_cli.engine.noise_predictor import NoisePredictor

    root = Path(root)
    sd_dir = root / "sd"
    sd_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = _write_tokenizer(sd_dir / "tokenizer")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = _tiny_vae()
        unet = _tiny_unet()
        text_encoder = _tiny_text_encoder(vocab_size)
        noise_predictor = NoisePredictor(tiny_noise_predictor_config())
        # Default inits leave some layers at zero (e.g. zero-initialised output convs); make every weight
        # matter so tests notice a missing or misplaced one.
        with torch.no_grad():
            for module in (vae, unet, text_encoder, noise_predictor):
                for p in module.parameters():
                    if p.ndim > 0 and float(p.abs().max()) == 0.0:
                        p.normal_(0.0, 0.02)

    vae.save_pretrained(sd_dir / "vae", safe_serialization=True)
    unet.save_pretrained(sd_dir / "unet", safe_serialization=True)
    text_encoder.save_pretrained(sd_dir / "text_encoder", safe_serialization=True)
    EulerDiscreteScheduler.from_config(SD_TURBO_SCHEDULER_CONFIG).save_pretrained(sd_dir / "scheduler")
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (sd_dir / "model_index.json").write_text(json.dumps(model_index, indent=2), encoding="utf-8")

    np_path = root / "noise_predictor.pth"
    torch.save(noise_predictor.state_dict(), np_path)
    return TinyModels(root=root, sd_dir=sd_dir, noise_predictor_path=np_path)


def build_full_size_components(dtype: torch.dtype | None = None, device: str = "cpu") -> Components:
    """The FULL SD-Turbo architectures (SD 2.1: UNet (320, 640, 1280, 1280), VAE (128, 256, 512, 512), OpenCLIP-H
    text tower 1024 x 23 layers) and the official noise predictor, with random weights, in memory, for benchmarks.

    The tokenizer is the tiny one (padded to 77), so prompt tokens differ from the real model's; compute cost does
    not. Takes tens of seconds and ~5 GB of RAM in fp32.
    """
    import tempfile

    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from invsr_cli.engine.loading import Components, set_sdpa_attention
    from invsr_cli.engine.noise_predictor import NoisePredictor, NoisePredictorConfig

    dtype = dtype or torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = _write_tokenizer(Path(tmp) / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(Path(tmp) / "tokenizer")

    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=768,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=max(vocab_size, 49408),
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            max_position_embeddings=77,
            hidden_act="gelu",
            projection_dim=512,
        )
    )
    noise_predictor = NoisePredictor(NoisePredictorConfig())
    scheduler = EulerDiscreteScheduler.from_config(SD_TURBO_SCHEDULER_CONFIG)
    for m in (unet, vae, text_encoder, noise_predictor):
        # nn.Module.to: diffusers' own .to() warns about casting models that have no fp32-only modules anyway
        torch.nn.Module.to(m.requires_grad_(False).eval(), device=device, dtype=dtype)
    set_sdpa_attention(unet, vae, noise_predictor)
    return Components(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        noise_predictor=noise_predictor,
        identity={"sd_model": {"source": "random", "arch": "full-size-sd-turbo"},
                  "noise_predictor": {"source": "random", "arch": "official"}},
    )


def save_full_size_models(root: Path) -> TinyModels:
    """Write :func:`build_full_size_components` (fp32, random weights) to disk in the layouts of the real weights:
    a diffusers SD folder (``root/sd``, safetensors, about 5 GB) and ``root/noise_predictor.pth`` (135 MB). The
    tokenizer is the tiny one. For measuring load times through the real loading code; takes a minute or two."""
    import torch

    root = Path(root)
    sd_dir = root / "sd"
    comps = build_full_size_components(dtype=torch.float32, device="cpu")
    comps.vae.save_pretrained(sd_dir / "vae", safe_serialization=True)
    comps.unet.save_pretrained(sd_dir / "unet", safe_serialization=True)
    comps.text_encoder.save_pretrained(sd_dir / "text_encoder", safe_serialization=True)
    comps.scheduler.save_pretrained(sd_dir / "scheduler")
    _write_tokenizer(sd_dir / "tokenizer")
    np_path = root / "noise_predictor.pth"
    torch.save(comps.noise_predictor.state_dict(), np_path)
    return TinyModels(root=root, sd_dir=sd_dir, noise_predictor_path=np_path)
