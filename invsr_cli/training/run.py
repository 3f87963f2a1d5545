"""``invsr train``: the training loop and its run folder.

``RUN_DIR/config.yaml`` (every resolved setting), ``ckpts/model_N.pth`` (the authors' layout: ``iters_start``,
``state_dict``, ``amp_scaler``, ``state_dict_dis``, ``amp_scaler_dis``; plus the optimiser states, the RNG states
and the data position they leave out), ``ema_ckpts/ema_model_N.pth`` (the bare EMA state dict, loadable by
``invsr upscale --noise-predictor`` and the authors' code), ``log.jsonl`` (one JSON object per iteration).
Every file is written atomically; ``resume=True`` continues from the newest checkpoint exactly (bit-identical on the
CPU); SIGTERM makes the loop save at the end of the current iteration and stop.

One process or N (``accelerate launch -m invsr_cli train ...``, :mod:`invsr_cli.training.processes`): the same code
path. ``--batch`` is the global batch: each process makes its slice of it (``batch / N`` samples in micro-batches of
``--microbatch``), the gradients are averaged across processes, and every random draw is made per global iteration,
so the training is the same on 1 or N processes and a checkpoint resumes on any process count that divides the
batch. Only the main process writes the run folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from invsr_cli.base.atomic import atomic_write_bytes, cleanup_stale_temps
from invsr_cli.base.errors import ConfigError, InvSRError, OutputError
from invsr_cli.training.page import write_page
from invsr_cli.training.runlog import read_log, rewind_log
from invsr_cli.training.validate import Validator, split_validation

__all__ = ["TrainOptions", "run_training", "latest_checkpoint", "TrainingStopped"]

_CKPT_RE = re.compile(r"^model_(\d+)\.pth$")


class TrainingStopped(InvSRError):
    """A persistent non-finite loss: the run stopped, the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainOptions:
    inputs: tuple[str, ...]
    out: str
    sd_model: str = "stabilityai/sd-turbo"
    init: str = "v5"  # v5 | FILE (scratch: a freshly initialised predictor)
    discriminator: str | None = None
    lpips: str | None = None
    iterations: int = 2000
    batch: int = 4
    microbatch: int = 0  # 0: = batch
    crop: int = 512
    lr: float = 1e-5
    warmup: int = 200
    ema_rate: float = 0.999
    gan_after: int = 10_000
    no_gan: bool = False
    no_lpips: bool = False
    dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on the CPU) | fp32 | bf16 | fp16 (CUDA); config.yaml: resolved
    device: str = "auto"  # auto | cpu | cuda: where this invocation runs (not part of the run's identity)
    save_every: int = 500
    seed: int = 123456
    grad_checkpointing: bool = True
    resume: bool = False
    val: tuple[str, ...] = ()  # validation HR images or folders (default: held out from the inputs)
    val_every: int = 500  # 0: no validation
    val_holdout: int = -1  # without --val: images held out (-1: one in twenty, at most four)
    extra: dict[str, Any] = field(default_factory=dict)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in (run_dir / "ckpts").glob("model_*.pth") if (m := _CKPT_RE.match(p.name))]
    return max(found)[1] if found else None


def _kept(run_dir: Path) -> str:
    """What a stopped run leaves to resume from, for its message."""
    last = latest_checkpoint(run_dir)
    return f"the last good checkpoint {last} is kept" if last else "no checkpoint was saved yet"


def _finite(trainer: Any) -> bool:
    mods = [trainer.model, trainer.ema] + ([trainer.disc] if trainer.disc is not None else [])
    return all(bool(torch.isfinite(p).all()) for m in mods for p in m.parameters())


def _save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _check_out(run_dir: Path, opts: TrainOptions) -> None:
    cfg = run_dir / "config.yaml"
    if opts.resume:
        if not cfg.is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there (not a run folder)")
    elif cfg.exists() or (run_dir / "ckpts").exists():
        raise ConfigError(f"--out {run_dir} holds another run; pass --resume to continue it or choose a new folder")


def _build(opts: TrainOptions, warn: Callable[[str], None], device: torch.device):
    from invsr_cli.engine.loading import load_components
    from invsr_cli.engine.noise_predictor import NoisePredictor
    from invsr_cli.training.nets import load_discriminator, load_latent_lpips
    from invsr_cli.training.setup import place_frozen, trainer_from_components
    from invsr_cli.training.step import LossWeights, Optim

    scratch = opts.init == "scratch"
    np_spec = None if opts.init in ("v5", "scratch") else opts.init
    comps = load_components(opts.sd_model, np_spec, device="cpu", dtype="fp32")
    if scratch:
        comps.noise_predictor = NoisePredictor(comps.noise_predictor.config)
    place_frozen(comps, {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[opts.dtype], device)
    lpips = None if opts.no_lpips else load_latent_lpips(_need(opts.lpips, "latent LPIPS", "--lpips"))
    disc = None if opts.no_gan else load_discriminator(_need(opts.discriminator, "discriminator", "--discriminator"))
    weights = LossWeights(lpips=0.0 if opts.no_lpips else 2.0, gan=0.0 if opts.no_gan else 0.1,
                          gan_after=opts.gan_after)
    autocast = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[opts.dtype]
    return comps, trainer_from_components(
        comps, lpips=lpips, discriminator=disc, weights=weights,
        optim=Optim(lr=opts.lr, warmup=opts.warmup, ema_rate=opts.ema_rate), seed=opts.seed,
        autocast_dtype=autocast, grad_checkpointing=opts.grad_checkpointing,
    )


def _need(path: str | None, what: str, flag: str) -> str:
    if path:
        return path
    from invsr_cli.training.weights import training_file

    return str(training_file(what))


def run_training(opts: TrainOptions, *, on_record: Callable[[dict[str, Any]], None] | None = None,
                 warn: Callable[[str], None] | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Train until ``opts.iterations`` (or ``stop_after`` iterations of this call, or SIGTERM); returns a summary.
    Under several processes every process calls this; ``on_record`` is called on the main one only."""
    import yaml

    from invsr_cli.training.data import PairPool, PairSource, expand_inputs
    from invsr_cli.training.processes import Processes, resolve_precision, split_batch

    procs = Processes(opts.device)
    base_warn = warn or (lambda m: None)
    warn = base_warn if procs.is_main else (lambda m: base_warn(f"process {procs.rank}: {m}"))
    run_dir = Path(opts.out)
    _check_out(run_dir, opts)
    if opts.resume:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        saved.setdefault("val_every", 0)  # a run from before validation: holding images out now would shift its data
        opts = TrainOptions(**{**saved, "resume": True, "iterations": opts.iterations or saved["iterations"],
                               "device": opts.device})
    if not (math.isfinite(opts.lr) and opts.lr > 0):
        raise ConfigError(f"--lr must be a positive number, got {opts.lr}")
    opts = replace(opts, dtype=resolve_precision(opts.dtype, procs.device))
    micro, count = split_batch(opts.batch, opts.microbatch, procs.world)
    paths = expand_inputs(list(opts.inputs))
    if not paths:
        raise ConfigError("no training images found in the inputs")
    val_paths: list[Path] = []
    if opts.val_every > 0:
        if opts.val:
            val_paths = expand_inputs(list(opts.val))
        else:
            paths, val_paths = split_validation(paths, opts.val_holdout)
        if not val_paths and procs.is_main:
            warn("no validation: no --val images and none held out (fewer than 20 training images; "
                 "--val DIR or --val-holdout N)")
    if len(paths) < opts.batch and procs.is_main:
        warn(f"{len(paths)} image(s) for a batch of {opts.batch}: images repeat within a batch")

    comps, trainer = _build(opts, warn, procs.device)
    source = PairSource(paths, opts.crop, opts.seed, warn)
    pool = PairPool(10 * opts.batch)
    procs.wait()  # every process has checked --out before the main one creates the run there
    ckpt = latest_checkpoint(run_dir) if opts.resume else None
    if ckpt is not None:
        st = torch.load(ckpt, map_location="cpu", weights_only=False)
        trainer.load_state(st)
        source.load_state(st["data"])
        pool.load_state(st["pool"])
        was = int(st.get("processes", 1))
        if was != procs.world and procs.is_main:
            warn(f"resuming a run saved on {was} process(es) on {procs.world}: the same global batch "
                 f"({opts.batch}), split {count} x {micro} per process")
        if procs.is_main:
            rewind_log(run_dir / "log.jsonl", trainer.iteration)  # a kill after the checkpoint left later lines
            cleanup_stale_temps(run_dir)
    elif not opts.resume and procs.is_main:
        (run_dir / "ckpts").mkdir(parents=True, exist_ok=True)
        (run_dir / "ema_ckpts").mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in asdict(opts).items() if k != "device"}
        atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(
            {**config, "inputs": list(opts.inputs), "val": list(opts.val), "resume": False},
            sort_keys=False).encode())
    procs.wait()
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    # the main process validates (the others wait for it at the next iteration's collectives)
    validator = Validator(val_paths, opts.crop, trainer, comps, run_dir, warn) if val_paths and procs.is_main \
        else None

    stop = {"flag": False}
    old = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):  # noqa: ARG001
        stop["flag"] = True

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        old = None

    def save() -> None:
        if not procs.is_main:
            return
        n = trainer.iteration
        if not _finite(trainer):  # a finite loss can still step to inf weights: never save those
            raise TrainingStopped(f"non-finite weights after iteration {n} (try a lower --lr); stopped without "
                                  f"saving them, {_kept(run_dir)}")
        st = trainer.state()
        st["data"], st["pool"] = source.state(), pool.state()
        st["log_step"] = {"train": n, "val": 0}
        st["processes"] = procs.world
        ema_path, ckpt_path = run_dir / "ema_ckpts" / f"ema_model_{n}.pth", run_dir / "ckpts" / f"model_{n}.pth"
        kept = _kept(run_dir)
        try:  # the EMA first: the training checkpoint, which --resume reads, is the last file of a save
            _save(ema_path, trainer.ema.state_dict())
            _save(ckpt_path, st)
        except OutputError as exc:
            if not ckpt_path.exists():
                ema_path.unlink(missing_ok=True)
            raise type(exc)(f"saving the checkpoint of iteration {n} failed: {exc}; {kept}; free some space "
                            f"and continue with `invsr train --resume {run_dir}`") from exc

    log = (run_dir / "log.jsonl").open("a", encoding="utf-8") if procs.is_main else None
    cuda = procs.device.type == "cuda"

    def emit(rec: dict[str, Any]) -> None:
        if log is None:
            return
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if on_record:
            on_record(rec)

    validated = {"at": -1}

    def validate() -> None:
        if validator is None or validated["at"] == trainer.iteration:
            return
        rec = validator.run(trainer.iteration)
        validated["at"] = trainer.iteration
        if rec is not None:
            emit(rec)
            write_page(run_dir, read_log(run_dir / "log.jsonl"), config)

    done = 0
    bad_streak = 0
    try:
        if trainer.iteration == 0:
            validate()  # the starting predictor: the baseline of the scores and the strips' "before"
        while trainer.iteration < opts.iterations and not stop["flag"]:
            if stop_after is not None and done >= stop_after:
                break
            t0 = time.perf_counter()
            rec = trainer.step(_micro_batches(trainer, source, pool, procs, opts.batch, micro, count), procs=procs)
            stop["flag"] = procs.any(stop["flag"])  # the processes stop at the same iteration
            done += 1
            if not all(math.isfinite(v) for k, v in rec.items() if k != "lr"):
                bad_streak += 1
                if bad_streak >= 3 or trainer.scaler.is_enabled() is False:
                    raise TrainingStopped(
                        f"non-finite loss at iteration {trainer.iteration} (try a lower --lr, or --dtype fp32); "
                        f"stopped, {_kept(run_dir)}")
            else:
                bad_streak = 0
            if cuda:
                torch.cuda.synchronize(procs.device)
            rec.update(kind="train", iteration=trainer.iteration, iterations=opts.iterations,
                       seconds=time.perf_counter() - t0, peak_rss_mb=_peak_rss_mb(), processes=procs.world)
            if cuda:
                rec["peak_cuda_mb"] = torch.cuda.max_memory_allocated(procs.device) / 2**20
            rec["it_per_s"] = 1.0 / rec["seconds"]
            emit(rec)
            if opts.val_every > 0 and trainer.iteration % opts.val_every == 0:
                validate()
            if trainer.iteration % opts.save_every == 0:
                save()
        if trainer.iteration >= opts.iterations:
            validate()  # the final weights are scored even off the --val-every grid
        if stop["flag"] or trainer.iteration >= opts.iterations or (stop_after and done >= stop_after):
            if latest_checkpoint(run_dir) != run_dir / "ckpts" / f"model_{trainer.iteration}.pth":
                save()
        procs.wait()  # no process leaves while the main one is still writing
    finally:
        if log is not None:
            log.close()
            with contextlib.suppress(InvSRError, OSError):
                write_page(run_dir, read_log(run_dir / "log.jsonl"), config)
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    return {"iteration": trainer.iteration, "run_dir": str(run_dir), "stopped_by_signal": stop["flag"],
            "processes": procs.world, "main_process": procs.is_main}


def _micro_batches(trainer: Any, source: Any, pool: Any, procs: Any, batch: int, micro: int,
                   count: int) -> list[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
    """This process's ``count`` micro-batches of ``micro`` for the next global iteration: it makes its slice of the
    global samples, encodes their GT latents, all processes pool the fresh pairs (the pair pool is global, the same
    on every process), and the pool's output and the iteration's random draws are sliced back to this process."""
    per = micro * count
    mine = slice(procs.rank * per, (procs.rank + 1) * per)
    first = source.next
    pairs = [source.pair(first + procs.rank * per + j) for j in range(per)]
    source.next = first + batch
    lat = source.crop // trainer.latent_factor
    draws = trainer.draw(batch, (lat, lat))
    hr = torch.stack([p[1] for p in pairs])
    gt_noise = draws["gt_noise"][mine]
    gt_latent = torch.cat([trainer.encode(hr[i : i + micro], gt_noise[i : i + micro]).cpu()
                           for i in range(0, per, micro)])
    lq_all = procs.gather(torch.stack([p[0] for p in pairs]))
    gt_all = procs.gather(gt_latent)
    lq_b, gt_b = pool.exchange(lq_all, gt_all, trainer.gen)
    out = []
    for j in range(count):
        s = slice(mine.start + j * micro, mine.start + (j + 1) * micro)
        out.append((lq_b[s], gt_b[s], {k: v[s] for k, v in draws.items() if k != "gt_noise"}))
    return out
