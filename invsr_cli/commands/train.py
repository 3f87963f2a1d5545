"""``invsr train``: fine-tune the noise predictor on your own pictures (the loop is invsr_cli.training.run)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    """Add ``train`` to ``app``."""

    @app.command(epilog="Examples:\n\n  invsr train manga/ --out runs/manga --iterations 2000\n\n"
                 "  invsr train --resume runs/manga\n\n  invsr train photos/ --out runs/x --no-gan --dtype bf16\n\n"
                 "  accelerate launch --num_processes 4 -m invsr_cli train photos/ --out runs/x --batch 64 "
                 "--microbatch 16")
    def train(
        inputs: Annotated[list[str] | None, typer.Argument(help="HR training images or folders.",
                                                           show_default=False, metavar="HR...")] = None,
        out: Annotated[str | None, typer.Option("--out", help="The run folder (refused if it holds a run).")] = None,
        resume: Annotated[str | None, typer.Option("--resume", help="Continue the run in this folder.")] = None,
        init: Annotated[str, typer.Option("--init", help="Start from v5 (published), v5_diftune, scratch or "
                                          "a FILE.")] = "v5",
        sd_model: Annotated[str, typer.Option("--sd-model", help="SD-2.x model (Hub id or folder).")]
        = "stabilityai/sd-turbo",
        discriminator: Annotated[str | None, typer.Option("--discriminator", help="Discriminator .pth (default: "
                                                          "the released one from the cache).")] = None,
        lpips: Annotated[str | None, typer.Option("--lpips", help="Latent LPIPS .pth (default: the released "
                                                  "one from the cache).")] = None,
        iterations: Annotated[int | None, typer.Option("--iterations", help="Total iterations (default 2000; "
                                                      "with --resume: the run's own).")] = None,
        batch: Annotated[int, typer.Option("--batch", help="Global batch per iteration.")] = 4,
        microbatch: Annotated[int, typer.Option("--microbatch", help="Micro-batch (gradient accumulation); "
                                                "0 = --batch.")] = 0,
        crop: Annotated[int, typer.Option("--crop", help="HR crop size (multiple of 32).")] = 512,
        lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 1e-5,
        warmup: Annotated[int, typer.Option("--warmup", help="Linear warm-up iterations.")] = 200,
        gan_after: Annotated[int, typer.Option("--gan-after", help="Discriminator warm-up iterations before the "
                                               "GAN term reaches the predictor.")] = 10_000,
        no_gan: Annotated[bool, typer.Option("--no-gan", help="Without the GAN term (ablation).")] = False,
        no_lpips: Annotated[bool, typer.Option("--no-lpips", help="Without the latent LPIPS term.")] = False,
        dtype: Annotated[str, typer.Option("--dtype", help="auto (fp16 on CUDA, fp32 on the CPU), fp32, bf16 "
                                           "(autocast) or fp16 (autocast + GradScaler, CUDA only).")] = "auto",
        device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda (under accelerate launch: each "
                                            "process's own GPU).")] = "auto",
        save_every: Annotated[int, typer.Option("--save-every", help="Checkpoint every N iterations.")] = 500,
        seed: Annotated[int, typer.Option("--seed", help="Seed of every random draw.")] = 123456,
        json_output: Annotated[bool, typer.Option("--json", help="One JSON object per iteration.")] = False,
    ) -> None:
        """Fine-tune the noise predictor on HR images (Real-ESRGAN degradations, L2 + latent LPIPS + GAN)."""
        from invsr_cli.base.errors import ConfigError
        from invsr_cli.training.run import TrainOptions, run_training

        if resume:
            opts = TrainOptions(inputs=(), out=resume, resume=True, iterations=iterations or 0, device=device)
        else:
            if not inputs or not out:
                raise ConfigError("give HR images or folders and --out RUN_DIR (or --resume RUN_DIR)")
            opts = TrainOptions(
                inputs=tuple(inputs), out=out, sd_model=sd_model, init=init, discriminator=discriminator,
                lpips=lpips, iterations=iterations or 2000, batch=batch, microbatch=microbatch, crop=crop, lr=lr,
                warmup=warmup, gan_after=gan_after, no_gan=no_gan, no_lpips=no_lpips, dtype=dtype,
                save_every=save_every, seed=seed, device=device)

        def show(rec: dict[str, Any]) -> None:
            if json_output:
                typer.echo(json.dumps(rec))
            else:
                typer.echo(f"it {rec['iteration']}  loss {rec['total']:.4f} (l2 {rec['l2']:.4f} lpips "
                           f"{rec['lpips']:.4f} gan {rec['gan']:.4f})  lr {rec['lr']:.2e}  "
                           f"{rec['it_per_s']:.2f} it/s")

        summary = run_training(opts, on_record=show, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
        if not json_output and summary["main_process"]:  # under accelerate: said once, by the main process
            typer.echo(f"stopped at iteration {summary['iteration']}; checkpoints in {summary['run_dir']}")
