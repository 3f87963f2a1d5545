"""Where the training-only weights come from: the released discriminator and latent LPIPS on the authors' Hub repo,
fetched by ``invsr models download --training`` into the same cache as the other weights (never at test time)."""

from __future__ import annotations

from pathlib import Path

from invsr_cli.base.errors import WeightsUnavailableError
from invsr_cli.engine.weights import DEFAULT_NP_REPO, hub_cache_dir

__all__ = ["TRAINING_FILES", "training_file", "download_training"]

TRAINING_FILES = {
    "discriminator": "discriminator_sd_turbo_v5.pth",
    "latent LPIPS": "vgg16_sdturbo_lpips.pth",
}


def training_file(what: str) -> Path:
    """The cached file for ``what`` (a key of :data:`TRAINING_FILES`); a filesystem lookup, never a connection."""
    from huggingface_hub import try_to_load_from_cache

    name = TRAINING_FILES[what]
    found = try_to_load_from_cache(DEFAULT_NP_REPO, name, cache_dir=hub_cache_dir())
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    raise WeightsUnavailableError(
        f"the {what} ({DEFAULT_NP_REPO}:{name}) is not in the cache {hub_cache_dir()}; run "
        f"`invsr models download --training` (or pass the file), or train without it (--no-gan / --no-lpips)")


def download_training() -> dict[str, str]:
    """Fetch both training files (network); returns ``{what: path}``."""
    from huggingface_hub import hf_hub_download

    return {what: hf_hub_download(DEFAULT_NP_REPO, name, cache_dir=hub_cache_dir())
            for what, name in TRAINING_FILES.items()}
