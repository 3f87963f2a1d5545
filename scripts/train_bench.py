"""Seconds per training iteration and peak memory on the full-size random models (SD-Turbo UNet/VAE, v5-size
noise predictor, released-size discriminator and latent LPIPS; every loss term on, UNet gradient checkpointing),
placed as `invsr train` places them (the frozen UNet and VAE in the autocast dtype, the trained nets in float32).

    python scripts/train_bench.py CROP fp32|bf16|fp16 [BATCH] [ITERATIONS]   # e.g. 512 fp32 1 2; CUDA when present

An iteration here is what `invsr train` does per iteration on one process: make BATCH training pairs (crop, flip,
Real-ESRGAN training degradations of a random image), encode their GT latents, then the trainer's step (generator
pass through the frozen UNet, backward, AdamW, EMA, discriminator update). Each part is timed; peak RSS (and peak
CUDA memory) after each iteration.
"""

import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from invsr_cli.engine.testing import build_full_size_components
from invsr_cli.training.data import PairSource
from invsr_cli.training.discriminator import DiscriminatorConfig
from invsr_cli.training.latent_lpips import LatentLPIPS
from invsr_cli.training.setup import place_frozen, random_discriminator, trainer_from_components
from invsr_cli.training.step import LossWeights


def main() -> None:
    crop, name = int(sys.argv[1]), sys.argv[2]
    dt = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    b = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    iters = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dt == torch.float16 and dev.type != "cuda":
        sys.exit("fp16 needs CUDA (as `invsr train --dtype fp16`)")
    print(f"crop {crop} {name} batch {b} on {dev} ({torch.get_num_threads()} threads)", flush=True)
    t0 = time.time()
    c = build_full_size_components(dtype=torch.float32, device="cpu")
    place_frozen(c, dt or torch.float32, dev)
    tr = trainer_from_components(c, lpips=LatentLPIPS().to(dev),
                                 discriminator=random_discriminator(DiscriminatorConfig()),
                                 weights=LossWeights(gan_after=0), autocast_dtype=dt, grad_checkpointing=True)
    print(f"build {time.time() - t0:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        img = Path(tmp) / "hr.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (crop + 64, crop + 64, 3), dtype=np.uint8)).save(img)
        source = PairSource([img], crop, seed=0)
        lat = crop // tr.latent_factor
        for i in range(iters):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            pairs = [source.next_pair() for _ in range(b)]
            t_data = time.perf_counter()
            draws = tr.draw(b, (lat, lat))
            gt = tr.encode(torch.stack([p[1] for p in pairs]), draws.pop("gt_noise"))
            lq = torch.stack([p[0] for p in pairs])
            t_enc = time.perf_counter()
            r = tr.step([(lq, gt, draws)])
            if dev.type == "cuda":
                torch.cuda.synchronize()
            end = time.perf_counter()
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            cuda = f"  peak_cuda {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if dev.type == "cuda" else ""
            print(f"iter {i + 1}: {end - t:.1f} s (data {t_data - t:.1f}, gt encode {t_enc - t_data:.1f}, step "
                  f"{end - t_enc:.1f})  total {r['total']:.4f}  peak_rss {rss / 1024:.2f} GiB{cuda}", flush=True)


if __name__ == "__main__":
    main()
