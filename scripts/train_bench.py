"""Seconds per training iteration and peak memory on the full-size random models (SD-Turbo UNet/VAE, v5-size
noise predictor, released-size discriminator and latent LPIPS; every loss term on, UNet gradient checkpointing).

    python scripts/train_bench.py CROP fp32|bf16 [BATCH]     # e.g. 512 fp32 1; uses CUDA when present
"""

import resource
import sys
import time

import torch

from invsr_cli.engine.testing import build_full_size_components
from invsr_cli.training.discriminator import DiscriminatorConfig
from invsr_cli.training.latent_lpips import LatentLPIPS
from invsr_cli.training.setup import random_discriminator, trainer_from_components
from invsr_cli.training.step import LossWeights


def main() -> None:
    crop, dt = int(sys.argv[1]), {"fp32": None, "bf16": torch.bfloat16}[sys.argv[2]]
    b = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    c = build_full_size_components(device=dev)
    print("build s", round(time.time() - t0, 1), flush=True)
    tr = trainer_from_components(c, lpips=LatentLPIPS().to(dev),
                                 discriminator=random_discriminator(DiscriminatorConfig()),
                                 weights=LossWeights(gan_after=0), autocast_dtype=dt, grad_checkpointing=True)
    lq, gt = torch.rand(b, 3, crop // 4, crop // 4), torch.randn(b, 4, crop // 8, crop // 8)
    for i in range(3):
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        r = tr.step([(lq, gt)])
        if dev == "cuda":
            torch.cuda.synchronize()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cuda = f" peak_cuda {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if dev == "cuda" else ""
        print(f"iter {i + 1}: {time.perf_counter() - t:.2f} s  total {r['total']:.4f}  peak_rss {rss:.0f} MB{cuda}",
              flush=True)


if __name__ == "__main__":
    main()
