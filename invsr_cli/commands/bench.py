"""`invsr bench`: time the real batch pipeline against a baseline that behaves like the authors' code.

Both paths run in the same process, on the same models (random weights: timing does not depend on weight values,
nothing is downloaded), and call the same engine core (:meth:`InvSREngine.upscale`) for the diffusion math, so
the arithmetic per tile is identical; only the pipeline around it differs.

* **engine**: the unit of work every run uses (:func:`invsr_cli.work.process.process_images`) fed with in-memory images
  instead of files: tiles packed across images into batches, the prompt embedded once, Gaussian blending into a
  float32 accumulator on the engine's device. Only reading and writing files are left out.
* **baseline** (METHOD.md, "Tiling in the official code"): tile 128 LR with 50% overlap (stride 64) unless told
  otherwise, one image's tiles per batch, the prompt re-encoded for every batch (the text encoder runs each time),
  float64 accumulation of Gaussian-weighted tiles on the device, everything sequential.

Stage times come from forward pre/post hooks on the components (noise predictor, VAE encoder, UNet, VAE decoder,
text encoder; CUDA is synchronised in each hook), plus timers around blending. Peak memory on a CPU is the peak RSS
of each path: on Linux the kernel's high-water mark (``VmHWM``) is reset before each path through
``/proc/self/clear_refs``; where that is not possible it is the process-wide ``ru_maxrss`` (it never goes down, so
the second path's figure includes the first's), and ``peak_rss_scope`` says which. On CUDA:
``torch.cuda.max_memory_allocated/reserved``, reset before each path.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from invsr_cli.base.errors import ConfigError
from invsr_cli.engine.timing import STAGES, StageTimer

__all__ = [
    "BenchOptions",
    "StageTimer",
    "parse_size",
    "build_engine",
    "make_images",
    "engine_path",
    "baseline_path",
    "run_bench",
    "render_table",
    "machine_info",
]

AUTHORS_TILE = 128
QUICK = dict(lr_size="64x64", steps=1, device="cpu", tile=64)


@dataclass(frozen=True)
class BenchOptions:
    """What to measure. ``baseline_tile``/``baseline_overlap`` default to the authors' 128 / tile // 2."""

    lr_size: str = "128x128"  # WxH of each LR image
    images: int = 1
    steps: int = 1
    tile: int = 128
    overlap: int = 32
    batch_size: int = 1
    device: str = "auto"
    dtype: str = "auto"
    tiny: bool = False
    baseline: bool = True
    baseline_tile: int | None = None
    baseline_overlap: int | None = None
    posterior: str = "mean"
    seed: int = 0
    warmup: int = 1  # untimed runs first: the engine path; also the baseline on CUDA or with compile
    baseline_first: bool = False  # measure the baseline before the engine path (to see order effects)
    repeat: int = 1  # timed runs of each path, alternating; each path reports its median run
    compile: bool = False
    quick: bool = False

    def resolved(self) -> BenchOptions:
        """Apply ``--quick`` (LR 64x64, 1 step, CPU, tile 64) over the other values."""
        if not self.quick:
            return self
        return replace(self, lr_size=QUICK["lr_size"], steps=QUICK["steps"], device=QUICK["device"],
                       tile=QUICK["tile"])


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> (width, height)."""
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ConfigError(f"--lr-size must be WxH, e.g. 128x128; got {text!r}") from None
    if w < 1 or h < 1:
        raise ConfigError(f"--lr-size must be positive, got {text!r}")
    return w, h


# -- timing -------------------------------------------------------------------------------------------------------


# -- models and inputs --------------------------------------------------------------------------------------------


def build_engine(device: str = "auto", dtype: str = "auto", *, tiny: bool = False, compile: bool = False) -> Any:
    """An InvSREngine with random weights: full-size SD-Turbo + noise predictor, or the tiny test models."""
    from invsr_cli.engine.devices import resolve_device, resolve_dtype
    from invsr_cli.engine.loading import load_components
    from invsr_cli.engine.malloc import keep_freed_memory
    from invsr_cli.engine.sampler import InvSREngine
    from invsr_cli.engine.testing import build_full_size_components, build_tiny_models

    _quiet_libraries()
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if dev.type == "cpu":  # as `invsr upscale` does on a CPU, before building (invsr_cli/engine/malloc.py)
        keep_freed_memory()
    if tiny:
        with tempfile.TemporaryDirectory(prefix="invsr-bench-") as tmp:
            models = build_tiny_models(tmp, seed=0)
            components = load_components(models.sd_dir, models.noise_predictor_path, device=dev, dtype=dt,
                                         offline=True)
    else:
        components = build_full_size_components(dtype=dt, device=str(dev))
    engine = InvSREngine(components)
    if compile:
        engine.compile()
    return engine


def _quiet_libraries() -> None:
    """No loading progress bars or advice from diffusers/transformers in the benchmark's output."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    for lib in (dlog, tlog):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def make_images(n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` smooth random RGB images, ``height x width x 3`` float32 in [0, 1] (content does not affect timing)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for _ in range(n):
        img = np.empty((height, width, 3), np.float32)
        for c in range(3):
            fy, fx, ph = rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2), rng.uniform(0, 6.3)
            img[..., c] = 0.5 + 0.3 * np.sin(fy * yy + ph) * np.cos(fx * xx)
        img += rng.normal(0, 0.05, img.shape).astype(np.float32)
        out.append(np.clip(img, 0.0, 1.0))
    return out


def _settings(tile: int, overlap: int, batch_size: int, steps: int, posterior: str, seed: int) -> Any:
    from invsr_cli.engine.schedules import default_timesteps
    from invsr_cli.settings.settings import Settings

    return Settings(timesteps=tuple(default_timesteps(steps)), posterior=posterior, seed=seed, tile=tile,
                    overlap=overlap, batch_size=batch_size)


# -- the two paths ------------------------------------------------------------------------------------------------


def engine_path(engine: Any, images: Sequence[np.ndarray], settings: Any,
                timer: StageTimer | None = None) -> tuple[list[np.ndarray], int]:
    """Upscale ``images`` (HxWx3 float32) through :func:`invsr_cli.work.process.process_images`, the unit of work every
    run uses, with the decoded pixels handed in and the results kept on the host instead of written; returns
    (HR images, tiles run).

    The prompt cache is emptied first, so the one text-encoder run a real process makes is counted."""
    from invsr_cli.settings.settings import FixedPolicy
    from invsr_cli.work.process import ImageTask, process_images

    timer = timer or StageTimer(engine.device)
    engine.clear_prompt_cache()
    results: dict[int, np.ndarray] = {}

    def keep(img: Any, rgb: np.ndarray, models: Any) -> tuple[int, int]:
        results[img.task.index] = rgb
        return rgb.shape[1], rgb.shape[0]

    tasks = [ImageTask(job=_in_memory_job(i), index=i, image=_in_memory_image(rgb)) for i, rgb in enumerate(images)]
    outcomes = list(process_images(tasks, FixedPolicy(settings), engine, write=keep, timer=timer))
    failed = [o for o in outcomes if o.status != "done"]
    if failed or len(results) != len(images):
        raise RuntimeError(f"the engine path finished {len(results)} of {len(images)} images: "
                           f"{[o.reason for o in failed]}")
    return [results[i] for i in range(len(images))], sum(o.tiles for o in outcomes)


def _in_memory_job(index: int) -> Any:
    from pathlib import Path, PurePosixPath

    from invsr_cli.work.job import Job

    name = f"<bench image {index}>"
    return Job(Path(name), Path(name), PurePosixPath(name), "png")


def _in_memory_image(rgb: np.ndarray) -> Any:
    from pathlib import Path

    from invsr_cli.imaging.decode import LoadedImage

    h, w = rgb.shape[:2]
    return LoadedImage(Path("<bench>"), rgb, None, grayscale=False, bit_depth=8, format="png", icc=None, exif=None,
                       width=w, height=h)


def baseline_path(engine: Any, images: Sequence[np.ndarray], *, tile: int = AUTHORS_TILE,
                  overlap: int | None = None, batch_size: int = 1, timesteps: Sequence[int],
                  posterior: str = "mean", seed: int = 0,
                  timer: StageTimer | None = None) -> tuple[list[np.ndarray], int]:
    """The authors' pipeline around the same engine core; returns (HR images, tiles run).

    Per image, sequentially: plan tiles (``overlap`` default ``tile // 2``), batches of that image's tiles only,
    the prompt re-encoded before every batch, outputs weighted by the float64 Gaussian and accumulated in
    float64 on the device, normalised, copied to the host. Tile ``i`` uses seed ``seed + i`` like the runner."""
    import torch

    from invsr_cli.geometry.tiling import BlendAccumulator, gaussian_kernel_1d, pad_image, plan_tiles

    timer = timer or StageTimer(engine.device)
    device = engine.device
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    overlap = tile // 2 if overlap is None else overlap
    results, tiles = [], 0
    for rgb in images:
        plan = plan_tiles(rgb.shape[0], rgb.shape[1], tile, min(overlap, tile // 2))
        lr = torch.from_numpy(pad_image(rgb, plan)).permute(2, 0, 1).contiguous()
        with timer.stage("blend"):
            g = gaussian_kernel_1d(plan.hr_tile)
            weights = torch.from_numpy(np.outer(g, g)).to(device, acc_dtype)
            acc = BlendAccumulator(plan, weights, zeros=lambda s: torch.zeros(s, dtype=acc_dtype, device=device))
        n = plan.n_tiles
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            x = torch.stack([lr[:, rows, cols] for i in idx for rows, cols in [plan.lr_slices(i)]]).to(device)
            engine.clear_prompt_cache()  # the authors encode the prompt for every batch
            out = engine.upscale(x, timesteps=timesteps, seed=[seed + i for i in idx], posterior=posterior,
                                 check_finite=False)
            with timer.stage("blend"):
                for i, o in zip(idx, out, strict=True):
                    acc.add(i, o.to(acc_dtype))
        with timer.stage("blend"):
            hr = acc.result()
        results.append(hr.clamp(0, 1).permute(1, 2, 0).contiguous().float().cpu().numpy())
        tiles += n
    return results, tiles


# -- the benchmark ------------------------------------------------------------------------------------------------


def machine_info(device: Any = "cpu", dtype: Any = None) -> dict[str, Any]:
    import torch

    from invsr_cli.engine.malloc import mode as malloc_mode

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    info = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "malloc": malloc_mode(),  # "keep": glibc keeps freed memory for reuse (invsr_cli/engine/malloc.py)
    }
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark of this process (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(since_reset: bool) -> float:
    """Peak RSS in MB: ``VmHWM`` (since the last reset) or the process-wide ``ru_maxrss``."""
    if since_reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _measure(engine: Any, timer: StageTimer, fn: Any, hr_pixels: int) -> dict[str, Any]:
    import torch

    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(engine.device)
    rss_reset = not cuda and _reset_peak_rss()
    timer.reset()
    timer.sync()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    outputs, tiles = fn(timer)
    timer.sync()
    seconds = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    stages = {name: round(timer.seconds.get(name, 0.0), 4) for name in STAGES}
    stages["other"] = round(max(0.0, seconds - sum(stages.values())), 4)
    stats: dict[str, Any] = {
        "seconds": round(seconds, 4),
        "tiles": tiles,
        "tiles_per_s": round(tiles / seconds, 4),
        "seconds_per_tile": round(seconds / tiles, 4),
        "output_mp": round(hr_pixels / 1e6, 4),
        "output_mp_per_s": round(hr_pixels / 1e6 / seconds, 5),
        "stages": stages,
        "calls": {name: timer.calls.get(name, 0) for name in STAGES},
        # minor page faults in this path (process-wide counter): fresh pages the allocator had to map
        "page_faults": faults,
    }
    if cuda:
        stats["peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(engine.device) / 2**20, 1)
        stats["peak_reserved_mb"] = round(torch.cuda.max_memory_reserved(engine.device) / 2**20, 1)
    else:
        stats["peak_rss_mb"] = round(_peak_rss_mb(rss_reset), 1)
        stats["peak_rss_scope"] = "path" if rss_reset else "process"
    return stats | {"_outputs": outputs}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median time (the lower middle one for an even count), with all runs' seconds."""
    ranked = sorted(runs, key=lambda r: r["seconds"])
    return ranked[(len(ranked) - 1) // 2] | {"seconds_runs": [r["seconds"] for r in runs]}


def run_bench(options: BenchOptions | None = None, *, engine: Any = None, **overrides: Any) -> dict[str, Any]:
    """Build the models, run the engine path and (unless ``baseline=False``) the baseline; return the report:
    ``machine``, ``config``, ``build_seconds``, ``engine``, ``baseline`` (or None), ``ratios``
    (baseline / engine: ``time``, ``tiles``, ``seconds_per_tile``) and ``output_difference``.

    ``engine``: an already built InvSREngine to measure (its device and dtype win over the options'; several
    configurations can then share one model build, e.g. ``scripts/gpu_bench.sh``)."""
    from invsr_cli.engine.devices import resolve_device, resolve_dtype
    from invsr_cli.engine.schedules import default_timesteps

    opts = replace(options or BenchOptions(), **overrides).resolved()
    width, height = parse_size(opts.lr_size)
    for name in ("images", "steps", "batch_size", "repeat"):
        if int(getattr(opts, name)) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(opts, name)}")
    dev = engine.device if engine is not None else resolve_device(opts.device)
    dt = engine.dtype if engine is not None else resolve_dtype(opts.dtype, dev)
    settings = _settings(opts.tile, opts.overlap, opts.batch_size, opts.steps, opts.posterior, opts.seed)
    b_tile = opts.baseline_tile or AUTHORS_TILE
    b_overlap = b_tile // 2 if opts.baseline_overlap is None else opts.baseline_overlap
    if b_tile % 16 or not 0 <= b_overlap < b_tile:
        raise ConfigError(f"baseline tile {b_tile} / overlap {b_overlap}: tile must be a multiple of 16, "
                          "overlap in [0, tile)")

    t0 = time.perf_counter()
    if engine is None:
        engine = build_engine(str(dev), dt, tiny=opts.tiny, compile=opts.compile)
    build_seconds = time.perf_counter() - t0
    images = make_images(opts.images, width, height, seed=opts.seed)
    hr_pixels = opts.images * width * height * 16
    timer = StageTimer(dev)
    warmup = int(opts.warmup)
    warm_baseline = opts.baseline and (dev.type == "cuda" or opts.compile)

    def run_engine(t: StageTimer) -> tuple[list[np.ndarray], int]:
        return engine_path(engine, images, settings, t)

    def run_baseline(t: StageTimer) -> tuple[list[np.ndarray], int]:
        return baseline_path(engine, images, tile=b_tile, overlap=b_overlap, batch_size=opts.batch_size,
                             timesteps=settings.timesteps, posterior=opts.posterior, seed=opts.seed, timer=t)

    timer.attach(engine)
    try:
        # Untimed warm-up (first-call allocations, cuDNN autotuning, compilation). On a CPU only the engine path
        # is warmed (a baseline tile costs ~25 s full-size in fp32); the baseline runs second, after it.
        for _ in range(warmup):
            run_engine(timer)
            if warm_baseline:
                run_baseline(timer)
        # --repeat N: the paths alternate (E B, B E, E B, ...: ABBA cancels a linear drift of the machine's speed)
        # and each path reports its median-time run, with every run's seconds in `seconds_runs`.
        runs: dict[str, list[dict[str, Any]]] = {"engine": [], "baseline": []}
        for r in range(opts.repeat):
            order = ["engine", "baseline"] if opts.baseline else ["engine"]
            if opts.baseline_first != (r % 2 == 1):
                order.reverse()
            for name in order:
                runs[name].append(_measure(engine, timer, run_engine if name == "engine" else run_baseline,
                                           hr_pixels))
    finally:
        timer.detach()
    eng = _median_run(runs["engine"])
    base = _median_run(runs["baseline"]) if opts.baseline else None
    e_out = eng.pop("_outputs")
    ratios = same = None
    if base is not None:
        b_out = base.pop("_outputs")
        if (b_tile, b_overlap) == (opts.tile, opts.overlap):  # same tiles: the results must agree
            same = {
                "max_abs_diff": float(max(np.abs(a - b).max() for a, b in zip(e_out, b_out, strict=True))),
                "mean_abs_diff": float(np.mean([np.abs(a - b).mean() for a, b in zip(e_out, b_out, strict=True)])),
            }
        del b_out
        ratios = {
            "time": round(base["seconds"] / eng["seconds"], 3),
            "tiles": round(base["tiles"] / eng["tiles"], 3),
            "seconds_per_tile": round(base["seconds_per_tile"] / eng["seconds_per_tile"], 3),
        }
    config = asdict(opts) | {
        "lr_width": width, "lr_height": height, "hr_width": 4 * width, "hr_height": 4 * height,
        "timesteps": list(default_timesteps(opts.steps)), "baseline_tile": b_tile, "baseline_overlap": b_overlap,
        "warmup": warmup, "warmup_baseline": warm_baseline,
        "order": ("engine" if not opts.baseline else
                  "baseline, engine" if opts.baseline_first else "engine, baseline"),
        "models": "tiny random" if opts.tiny else "full-size random (SD-Turbo + noise predictor)",
    }
    return {
        "machine": machine_info(dev, dt),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
        "build_seconds": round(build_seconds, 2),  # ~0 when an engine was given
        "engine": eng,
        "baseline": base,
        "ratios": ratios,
        # engine vs baseline outputs, only when both use the same tile and overlap (else None)
        "output_difference": same,
    }


def render_table(report: dict[str, Any], file: Any = None) -> None:
    """Print the report as rich tables (the terminal view of ``invsr bench``)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file, soft_wrap=True)
    m, c = report["machine"], report["config"]
    console.print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device {m['device']}, "
                  f"dtype {m['dtype']}" + (f", {m['gpu']}" if m.get("gpu") else ""))
    console.print(f"{c['images']} x LR {c['lr_width']}x{c['lr_height']} -> {c['hr_width']}x{c['hr_height']}, "
                  f"steps {c['steps']} {c['timesteps']}, batch {c['batch_size']}, {c['models']}; "
                  f"engine tile {c['tile']}/overlap {c['overlap']}, baseline tile {c['baseline_tile']}/overlap "
                  f"{c['baseline_overlap']}; models built in {report['build_seconds']:.1f} s")
    paths = [("engine", report["engine"])] + ([("baseline", report["baseline"])] if report["baseline"] else [])
    table = Table("", *[name for name, _ in paths], *(["baseline/engine"] if report["ratios"] else []), box=None)

    def row(label: str, values: list[str], ratio: str = "") -> None:
        table.add_row(label, *values, *([ratio] if report["ratios"] else []))

    r = report["ratios"] or {}
    row("tiles", [str(p["tiles"]) for _, p in paths], f"{r.get('tiles', '')}")
    row("seconds", [f"{p['seconds']:.2f}" for _, p in paths], f"{r.get('time', '')}")
    row("s / tile", [f"{p['seconds_per_tile']:.3f}" for _, p in paths], f"{r.get('seconds_per_tile', '')}")
    row("tiles / s", [f"{p['tiles_per_s']:.3f}" for _, p in paths])
    row("output MP / s", [f"{p['output_mp_per_s']:.4f}" for _, p in paths])
    for stage in (*STAGES, "other"):
        row(f"  {stage} s", [f"{p['stages'][stage]:.3f}" + (f" ({p['calls'][stage]}x)" if stage in p["calls"]
                                                            else "") for _, p in paths])
    scope = report["engine"].get("peak_rss_scope", "process")
    rss_label = f"peak RSS MB ({'per path' if scope == 'path' else 'process'})"
    for key, label in (("peak_rss_mb", rss_label), ("peak_allocated_mb", "peak allocated MB"),
                       ("peak_reserved_mb", "peak reserved MB")):
        if key in report["engine"]:
            row(label, [f"{p[key]:.0f}" for _, p in paths])
    row("minor page faults", [str(p.get("page_faults", "")) for _, p in paths])
    console.print(table)
    if report.get("output_difference"):
        d = report["output_difference"]
        console.print(f"engine vs baseline output (same tiles): max |diff| {d['max_abs_diff']:.2e}, "
                      f"mean {d['mean_abs_diff']:.2e}")


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)
