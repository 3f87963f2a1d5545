"""``invsr train``: fine-tune the noise predictor on your own pictures (the loop is invsr_cli.training.run), and
``invsr train export RUN_DIR FILE.safetensors`` (invsr_cli.training.export).

What the user sees while it trains: on a terminal (stderr) a rich progress line (iteration of the total, it/s,
elapsed, ETA, the losses and learning rate) with warnings and validation scores printed above it; otherwise one
plain line per iteration on stdout; ``--json``: one JSON object per record (``kind`` ``train`` or ``val``) and a
last ``kind`` ``done`` object.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer


def _loss_text(rec: dict[str, Any]) -> str:
    return (f"loss {rec['total']:.4f} (l2 {rec['l2']:.4f} lpips {rec['lpips']:.4f} gan {rec['gan']:.4f})  "
            f"lr {rec['lr']:.2e}")


def _val_text(rec: dict[str, Any]) -> str:
    def num(key: str, digits: int) -> str:
        v = rec.get(key)
        return "n/a" if v is None else f"{v:.{digits}f}"

    return (f"validation at it {rec['iteration']}: PSNR {num('psnr', 2)} dB  SSIM {num('ssim', 4)}  "
            f"LPIPS {num('lpips', 4)}  ({rec['images']} image(s); {rec.get('strip') or 'no strip'})")


class _Plain:
    """One line per record on stdout, warnings on stderr."""

    def record(self, rec: dict[str, Any]) -> None:
        if rec.get("kind") == "val":
            typer.echo(_val_text(rec))
        else:
            typer.echo(f"it {rec['iteration']}/{rec['iterations']}  {_loss_text(rec)}  {rec['it_per_s']:.2f} it/s")

    def warn(self, text: str) -> None:
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class _Json(_Plain):
    def record(self, rec: dict[str, Any]) -> None:
        typer.echo(json.dumps(rec))


class _Rich(_Plain):
    """A live line on stderr: iteration M/N, bar, it/s, elapsed, ETA, losses; other lines printed above it."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console if console is not None else Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[note]}"),
                                 console=self.console, transient=True)
        self.task: Any = None

    def record(self, rec: dict[str, Any]) -> None:
        if rec.get("kind") == "val":
            self.console.print(_val_text(rec), markup=False, highlight=False)
            return
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("train", total=rec["iterations"], completed=rec["iteration"] - 1,
                                               rate="", note="")
        self.progress.update(self.task, completed=rec["iteration"], rate=f"{rec['it_per_s']:.2f} it/s",
                             note=_loss_text(rec))

    def warn(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(f"[yellow]warning:[/yellow] {escape(text)}", highlight=False)

    def close(self) -> None:
        self.progress.stop()


def _display(json_output: bool) -> _Plain:
    if json_output:
        return _Json()
    return _Rich() if sys.stderr.isatty() else _Plain()


def register(app: typer.Typer) -> None:
    """Add ``train`` (and its ``export`` form) to ``app``."""

    @app.command(epilog="Examples:\n\n  invsr train manga/ --out runs/manga --iterations 2000\n\n"
                 "  invsr train manga/ --out runs/manga --val manga_val/ --val-every 250\n\n"
                 "  invsr train --resume runs/manga\n\n  invsr train photos/ --out runs/x --no-gan --dtype bf16\n\n"
                 "  invsr train export runs/manga manga.safetensors [--iteration 1500]   (the EMA weights to "
                 "share, with their provenance; then: invsr upscale in/ out/ --noise-predictor manga.safetensors)\n\n"
                 "  accelerate launch --num_processes 4 -m invsr_cli train photos/ --out runs/x --batch 64 "
                 "--microbatch 16")
    def train(
        inputs: Annotated[list[str] | None, typer.Argument(help="HR training images or folders (or: export RUN_DIR "
                                                           "FILE.safetensors).", show_default=False,
                                                           metavar="HR...")] = None,
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
        val: Annotated[list[str] | None, typer.Option("--val", help="Validation HR images or folder (repeatable; "
                                                      "default: held out from the inputs).")] = None,
        val_every: Annotated[int, typer.Option("--val-every", help="Validate every N iterations (0: never).")]
        = 500,
        val_holdout: Annotated[int, typer.Option("--val-holdout", help="Without --val: training images held "
                                                 "out for validation (-1: one in 20, at most 4).")] = -1,
        json_output: Annotated[bool, typer.Option("--json", help="One JSON object per record.")] = False,
        iteration: Annotated[int | None, typer.Option("--iteration", help="export: the checkpoint's iteration "
                                                      "(default: the newest).")] = None,
    ) -> None:
        """Fine-tune the noise predictor on HR images (Real-ESRGAN degradations, L2 + latent LPIPS + GAN).
        `invsr train export RUN_DIR FILE.safetensors` writes a run's EMA weights for sharing."""
        from invsr_cli.base.errors import ConfigError

        if inputs and inputs[0] == "export" and not out and not resume:
            if len(inputs) != 3:
                raise ConfigError("usage: invsr train export RUN_DIR FILE.safetensors [--iteration N]")
            _export(inputs[1], inputs[2], iteration, json_output)
            return
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
                save_every=save_every, seed=seed, val=tuple(val or ()), val_every=val_every,
                val_holdout=val_holdout, device=device)

        show = _display(json_output)
        try:
            summary = run_training(opts, on_record=show.record, warn=show.warn)
        finally:
            show.close()
        if not summary["main_process"]:  # under accelerate: said once, by the main process
            return
        if json_output:
            typer.echo(json.dumps({"kind": "done", **summary}))
        else:
            typer.echo(f"stopped at iteration {summary['iteration']}; checkpoints in {summary['run_dir']}")


def _export(run_dir: str, out_file: str, iteration: int | None, json_output: bool) -> None:
    from invsr_cli.training.export import export_ema

    result = export_ema(run_dir, out_file, iteration)
    if json_output:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"exported the EMA weights of iteration {result['iteration']} to {result['file']} "
                   f"({result['bytes'] / 1e6:.1f} MB); use it with: invsr upscale IN OUT --noise-predictor "
                   f"{result['file']}")
