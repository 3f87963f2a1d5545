"""The batch runner: discover -> read -> plan tiles -> batch -> engine -> blend -> write -> report.

``run_batch`` takes the jobs (from ``invsr_cli.discover``) and one frozen ``Settings`` and does the whole run:

1. Take the output folder's lock, clean temporary files an interrupted run left, open the run manifest.
2. Decide per job: skip (an up-to-date output exists) or compute.
3. Read and tile images in background threads, a bounded number ahead of the compute.
4. Pack tiles from consecutive images into batches (grouped by schedule, so ``--preset auto`` folders mixing
   schedules still fill batches), run the engine, blend each tile into its image's float32 accumulator on the
   engine's device.
5. Finish each image as its last tile lands (colour fix, output checks), and write it in a background thread:
   atomically, so an interrupted run never leaves a truncated file under a final name.
6. Report each outcome and append it to the manifest; return the :class:`~invsr_cli.report.Summary`.

One bad input never stops the batch. A full disk does (every later write would fail too). SIGINT/SIGTERM stop
after the writes in flight. CUDA out-of-memory halves the batch, then the tile, before failing an image.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invsr_cli.discover import Job, display_path
from invsr_cli.errors import DiskFullError, InvSRError
from invsr_cli.manifest import MANIFEST_NAME, Manifest, input_stamp
from invsr_cli.report import Outcome, Reporter, Summary
from invsr_cli.settings import Settings

__all__ = ["run_batch", "analyse_inputs", "load_engine", "MIN_OOM_TILE"]

MIN_OOM_TILE = 64  # LR px: the smallest tile the out-of-memory retry goes down to
CPU_BATCH = 1  # `--batch-size auto` on a CPU: batching buys nothing there and costs memory
MPS_BATCH = 4  # `--batch-size auto` on Apple MPS, which reports no free memory to measure
MAX_AUTO_BATCH = 32  # past this a GPU gains nothing more from batching; a bound on host memory too
AUTO_MARGIN = 0.8  # use at most this share of the free device memory
WRITERS = 2
READERS = 2


def load_engine(settings: Settings) -> Any:
    """Load the InvSR engine the settings ask for (weights from the HF cache or local paths)."""
    from invsr_cli.engine.models import resolve_device
    from invsr_cli.engine.sampler import InvSREngine
    from invsr_cli.malloc import keep_freed_memory

    _quiet_libraries()
    if resolve_device(settings.device).type == "cpu":
        keep_freed_memory()  # before loading, so the weights come from the heap too; see invsr_cli/malloc.py
    return InvSREngine.load(
        settings.sd_model,
        settings.noise_predictor,
        device=settings.device,
        dtype=settings.dtype,
        vae_fp32=settings.vae_fp32,
        compile=settings.compile,
    )


def analyse_inputs(
    inputs: Sequence[str],
    rules: Any,
    *,
    recursive: bool = False,
    stdin_paths: Sequence[str] | None = None,
    max_pixels: int | None = None,
) -> list[dict[str, Any]]:
    """`invsr analyse`: per input, the degradation estimates and the preset ``rules`` choose (or an error)."""
    import tempfile

    from invsr_cli.analyse import analyse_image, choose
    from invsr_cli.discover import discover
    from invsr_cli.imageio import read_image

    nowhere = Path(tempfile.gettempdir()) / "invsr-analyse-writes-nothing"
    found = discover(inputs, nowhere, recursive=recursive, stdin_paths=stdin_paths, check_collisions=False)
    rows: list[dict[str, Any]] = [{"input": spec, "error": reason} for spec, reason in found.errors]
    for job in found.jobs:
        try:
            loaded = read_image(job.input, max_pixels=max_pixels)
        except InvSRError as e:
            rows.append({"input": str(job.input), "error": _reason(e, job)})
            continue
        deg = analyse_image(loaded.rgb)
        choice = choose(deg, rules)
        rows.append({"input": str(job.input), **deg.as_dict(), "preset": choice.preset, "reason": choice.reason})
    return rows


def _quiet_libraries() -> None:
    """diffusers and transformers print progress bars (with carriage returns) and advice while loading; a
    batch tool's output is its own, and cron logs must hold no control characters. Errors still surface as
    exceptions, which the CLI reports."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    for lib in (dlog, tlog):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def run_fingerprint(settings: Settings) -> str:
    """What an output depends on; with ``auto``, every schedule the rules can pick and the rules themselves."""
    if not settings.auto_choices:
        return settings.output_fingerprint()
    parts = [settings.output_fingerprint(), repr(settings.auto_rules)]
    parts += [f"{k}={v.output_fingerprint()}" for k, v in sorted(settings.auto_choices.items())]
    return "auto-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass(eq=False)
class _Image:
    """One image in flight: read, tiled, its tiles partly computed."""

    index: int
    job: Job
    settings: Settings
    loaded: Any  # imageio.LoadedImage
    plan: Any  # tiling.TilePlan
    lr: Any  # padded LR, torch (3,H,W) float32 on the CPU
    started: float
    degradation: dict[str, float] | None = None
    acc: Any = None  # tiling.BlendAccumulator on the engine device, made at the first tile
    done_tiles: int = 0
    generation: int = 0  # bumped when re-planned with a smaller tile after out-of-memory

    @property
    def key(self) -> tuple:
        s = self.settings
        return (s.timesteps, s.guidance, s.posterior, self.plan.tile)


@dataclass
class _Run:
    settings: Settings
    reporter: Reporter
    manifest: Manifest | None
    fingerprint: str
    summary: Summary = field(default_factory=Summary)
    stop_signal: str | None = None
    stop_reason: str | None = None

    def record(self, o: Outcome, job: Job | None = None) -> None:
        self.summary.outcomes.append(o)
        if o.status == "done":
            self.summary.processed += 1
            self.summary.output_pixels += o.width * o.height
        elif o.status == "skipped":
            self.summary.skipped += 1
        elif o.status == "failed":
            self.summary.failed += 1
        elif o.status == "planned":
            self.summary.planned += 1
        self.reporter.outcome(o)
        if self.manifest is not None and job is not None and o.status in ("done", "failed"):
            rec = {**o.to_dict(), "fingerprint": self.fingerprint, "settings": self.settings_for(o)}
            with contextlib.suppress(OSError):
                rec.update(input_stamp(job.input))
            try:
                self.manifest.append(rec)
            except OSError as e:  # the manifest is bookkeeping: losing a line must not lose the output
                self.reporter.warning(f"cannot append to the manifest {self.manifest.path}: {e}")

    def settings_for(self, o: Outcome) -> dict[str, Any]:
        s = self.settings
        if s.auto_choices and o.preset in s.auto_choices:
            s = s.auto_choices[o.preset]
        return s.to_dict()

    @property
    def stopping(self) -> bool:
        return self.stop_signal is not None or self.stop_reason is not None


def run_batch(
    jobs: Sequence[Job],
    settings: Settings,
    *,
    output_dir: Path,
    reporter: Reporter | None = None,
    dry_run: bool = False,
    manifest_path: Path | None = None,
    wait: bool = False,
    engine: Any = None,
    engine_loader: Callable[[Settings], Any] = load_engine,
    handle_signals: bool = True,
    input_errors: Sequence[tuple[str, str]] = (),
) -> Summary:
    """Upscale ``jobs`` with ``settings`` into ``output_dir`` and return the summary (see the module docstring).

    ``input_errors`` are ``(input, reason)`` pairs that discovery could not turn into jobs (no such file, matches
    nothing): they are reported and counted as failed like any other input, so the summary tells the whole run.

    ``engine`` may be given (tests, benchmarks, programs that keep one loaded); otherwise ``engine_loader`` is
    called once, and only if some job needs computing. Raises ``LockedError`` when another run holds the
    folder, ``WeightsUnavailableError``/``ModelLoadError`` when the models cannot be loaded.
    """
    from invsr_cli.imageio import cleanup_stale_temps
    from invsr_cli.lock import output_lock

    reporter = reporter or Reporter()
    start = time.perf_counter()
    if dry_run:
        run = _Run(settings, reporter, None, run_fingerprint(settings))
        _record_input_errors(input_errors, run)
        _plan_only(jobs, run)
        run.summary.wall_seconds = time.perf_counter() - start
        reporter.finish(run.summary)
        return run.summary

    with output_lock(output_dir, wait=wait):
        removed = cleanup_stale_temps(output_dir)
        if removed:
            reporter.warning(f"removed {removed} temporary file(s) left by an interrupted run in {output_dir}")
        manifest = Manifest(manifest_path or output_dir / MANIFEST_NAME)
        run = _Run(settings, reporter, manifest, run_fingerprint(settings))
        _record_input_errors(input_errors, run)
        todo = _skip_existing(jobs, run)
        reporter.start(len(jobs), len(todo), 0)
        try:
            with _stop_on_signals(run, enabled=handle_signals):
                if todo:
                    _compute(todo, run, engine if engine is not None else engine_loader(settings))
        finally:
            run.summary.interrupted = run.stop_signal
            run.summary.stopped = run.stop_reason
            run.summary.wall_seconds = time.perf_counter() - start
            reporter.finish(run.summary)
    return run.summary


def _record_input_errors(errors: Sequence[tuple[str, str]], run: _Run) -> None:
    for spec, reason in errors:
        run.record(Outcome(spec, "", "failed", reason=reason))


def _plan_only(jobs: Sequence[Job], run: _Run) -> None:
    """--dry-run: read headers only, print files, tiles and outputs; compute nothing, write nothing."""
    from invsr_cli.imageio import probe_image
    from invsr_cli.tiling import plan_tiles

    s = run.settings
    for job in jobs:
        try:
            info = probe_image(job.input, max_pixels=s.max_pixels)
            plan = plan_tiles(info.height, info.width, s.tile, s.overlap)
        except InvSRError as e:
            run.record(Outcome(str(job.input), str(job.output), "failed", reason=_reason(e, job)))
            continue
        w, h = _output_size(info.width, info.height, s.scale)
        exists = job.output.is_file()
        run.record(Outcome(
            str(job.input), str(job.output), "planned", width=w, height=h, tiles=len(plan.tiles),
            preset="auto" if s.auto_choices else s.preset, timesteps=() if s.auto_choices else s.timesteps,
            reason="output exists" if exists else "",
        ))
        run.summary.tiles += len(plan.tiles)


def _skip_existing(jobs: Sequence[Job], run: _Run) -> list[tuple[int, Job]]:
    todo = []
    for index, job in enumerate(jobs):
        if run.settings.skip_existing and job.output.is_file():
            state = run.manifest.is_up_to_date(job.input, job.output, run.fingerprint) if run.manifest else None
            if state is not False:
                why = "up to date" if state else "output exists"
                run.record(Outcome(str(job.input), str(job.output), "skipped", reason=why))
                continue
            run.reporter.warning(f"{job.output} is stale (other settings, models or a changed input): recomputing")
        todo.append((index, job))
    return todo


@contextlib.contextmanager
def _stop_on_signals(run: _Run, *, enabled: bool) -> Iterator[None]:
    """SIGINT/SIGTERM: stop taking new batches, finish the writes in flight, then return with the summary.
    A second SIGINT abandons at once (KeyboardInterrupt); no partial files either way (writes are atomic)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if run.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        run.stop_signal = name
        run.reporter.warning(f"{name}: finishing the writes in flight, then stopping (Ctrl-C again to abandon)")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def _output_size(w: int, h: int, scale: float) -> tuple[int, int]:
    return max(1, round(w * scale)), max(1, round(h * scale))


def _reason(e: BaseException, job: Job) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.replace(f"{job.input}: ", "").replace(f"{display_path(job.input)}: ", "")


def fit_batch(free_bytes: int, per_tile_bytes: int, *, margin: float = AUTO_MARGIN, cap: int = MAX_AUTO_BATCH) -> int:
    """The largest batch whose measured per-tile memory fits ``margin`` of the free memory, within 1..cap.
    (A batch never holds more tiles than are waiting, so a small job never pays for a large batch.)"""
    return max(1, min(int(free_bytes * margin) // max(per_tile_bytes, 1), cap))


def _batch_size(settings: Settings, engine: Any) -> int:
    if settings.batch_size != "auto":
        return int(settings.batch_size)
    kind = str(getattr(engine, "device", "cpu")).split(":")[0]
    if kind == "cuda":
        return fit_batch(*_measure_cuda_tile(settings, engine))
    return MPS_BATCH if kind == "mps" else CPU_BATCH


def _measure_cuda_tile(settings: Settings, engine: Any) -> tuple[int, int]:
    """Run one tile of the real schedule and measure its peak memory above what is already allocated (measure,
    don't guess); returns (free bytes, bytes per tile). The run also warms up the kernels."""
    import torch

    device = engine.device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    lr = torch.full((1, 3, settings.tile, settings.tile), 0.5, device=device)
    engine.upscale(lr, timesteps=settings.timesteps, seed=0, posterior="mean", guidance=settings.guidance,
                   check_finite=False)
    torch.cuda.synchronize(device)
    per_tile = torch.cuda.max_memory_allocated(device) - base
    free, _ = torch.cuda.mem_get_info(device)
    return free, per_tile


# -- the compute loop ---------------------------------------------------------------------------------------------


def _prepare(index: int, job: Job, settings: Settings, pin: bool) -> _Image:
    """Read, analyse (auto), plan and pad one image. Runs in a reader thread."""
    import torch

    from invsr_cli.imageio import read_image

    started = time.perf_counter()
    loaded = read_image(job.input, max_pixels=settings.max_pixels)
    s, degradation = settings, None
    if settings.auto_choices:
        from invsr_cli.analyse import analyse_image, choose

        deg = analyse_image(loaded.rgb)
        s = settings.auto_choices[choose(deg, settings.auto_rules).preset]
        degradation = deg.as_dict()
    img = _Image(index, job, s, loaded, None, None, started, degradation)
    _plan(img, s.tile, pin=pin and torch.cuda.is_available())
    return img


def _plan(img: _Image, tile: int, *, pin: bool = False) -> None:
    import torch

    from invsr_cli.tiling import pad_image, plan_tiles

    img.plan = plan_tiles(img.loaded.height, img.loaded.width, tile, min(img.settings.overlap, tile // 2))
    lr = torch.from_numpy(pad_image(img.loaded.rgb, img.plan)).permute(2, 0, 1).contiguous()
    img.lr = lr.pin_memory() if pin else lr
    img.acc = None
    img.done_tiles = 0


class _Compute:
    """The main loop's state: images in flight, tiles waiting per schedule, writes in flight."""

    def __init__(self, todo: list[tuple[int, Job]], run: _Run, engine: Any):
        import torch

        self.torch = torch
        self.run = run
        self.engine = engine
        self.device = engine.device
        self.batch = _batch_size(run.settings, engine)
        # Images read ahead of the compute: enough to fill a batch for every schedule `auto` can pick (so a folder
        # mixing schedules still fills batches), and a couple more. Bounded, whatever the number of inputs.
        choices = run.settings.auto_choices or {"": run.settings}
        schedules = {(s.timesteps, s.guidance, s.posterior) for s in choices.values()}
        self.cap = self.batch * len(schedules) + 2
        self.todo = deque(todo)
        self.reads: deque[tuple[int, Job, Future]] = deque()
        self.inflight: dict[int, _Image] = {}
        self.groups: dict[tuple, deque[tuple[_Image, int, int]]] = {}
        self.writes: deque[tuple[_Image, Future]] = deque()
        self.pin = str(self.device).startswith("cuda")
        self.readers = ThreadPoolExecutor(READERS, thread_name_prefix="invsr-read")
        self.writers = ThreadPoolExecutor(WRITERS, thread_name_prefix="invsr-write")

    # reading ----------------------------------------------------------------------------------------------
    def top_up(self) -> None:
        while self.todo and len(self.reads) + len(self.inflight) < self.cap and not self.run.stopping:
            index, job = self.todo.popleft()
            fut = self.readers.submit(_prepare, index, job, self.run.settings, self.pin)
            self.reads.append((index, job, fut))

    def take_read(self) -> None:
        index, job, fut = self.reads.popleft()
        try:
            img = fut.result()
        except InvSRError as e:
            self.fail_job(job, _reason(e, job))
            return
        except Exception as e:  # a decoder bug on one hostile file must not end the batch
            self.fail_job(job, f"cannot read: {type(e).__name__}: {e}")
            return
        self.inflight[index] = img
        self.enqueue(img)

    def enqueue(self, img: _Image) -> None:
        group = self.groups.setdefault(img.key, deque())
        group.extend((img, i, img.generation) for i in range(len(img.plan.tiles)))

    # compute ----------------------------------------------------------------------------------------------
    def full_group(self) -> tuple | None:
        for key, g in self.groups.items():
            if len(g) >= self.batch:
                return key
        return None

    def oldest_group(self) -> tuple | None:
        live = [(g[0][0].index, key) for key, g in self.groups.items() if g]
        return min(live)[1] if live else None

    def run_group(self, key: tuple) -> None:
        group = self.groups[key]
        self.run_tiles([group.popleft() for _ in range(min(self.batch, len(group)))])

    def run_tiles(self, items: list[tuple[_Image, int, int]]) -> None:
        # After an out-of-memory split, the other half may hold tiles of an image since failed or re-planned.
        items = [it for it in items if it[0].index in self.inflight and it[2] == it[0].generation]
        if not items:
            return
        torch = self.torch
        img0 = items[0][0]
        s, t = img0.settings, img0.plan.tile
        lr = torch.stack([img.lr[:, y:y + t, x:x + t] for img, i, _ in items for y, x in [img.plan.tiles[i]]])
        lr = lr.to(self.device, non_blocking=self.pin)
        seeds = [img.settings.seed + i for img, i, _ in items]
        try:
            out = self.engine.upscale(lr, timesteps=s.timesteps, seed=seeds, posterior=s.posterior,
                                      guidance=s.guidance, check_finite=False)
        except torch.OutOfMemoryError:
            self.out_of_memory(items)
            return
        except InvSRError as e:
            for img in {id(it[0]): it[0] for it in items}.values():
                self.fail_image(img, str(e))
            return
        self.run.reporter.tiles_done(len(items))
        self.run.summary.tiles += len(items)
        for (img, i, _), tile_out in zip(items, out, strict=True):
            if img.index not in self.inflight:
                continue
            if img.acc is None:
                img.acc = self.new_accumulator(img)
            img.acc.add(i, tile_out)
            img.done_tiles += 1
            if img.done_tiles == len(img.plan.tiles):
                self.finish_image(img)

    def out_of_memory(self, items: list[tuple[_Image, int, int]]) -> None:
        """Retry with half the batch; at batch 1, re-plan the image with half the tile, down to MIN_OOM_TILE."""
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
        if len(items) > 1:
            self.batch = max(1, len(items) // 2)
            self.run.reporter.warning(f"out of memory at batch {len(items)}: retrying with batch {self.batch}")
            half = len(items) // 2
            self.run_tiles(items[:half])
            self.run_tiles(items[half:])
            return
        img = items[0][0]
        tile = img.plan.tile // 2
        if tile < MIN_OOM_TILE or tile % 16:
            self.fail_image(img, f"out of memory even at batch 1 and tile {img.plan.tile}")
            return
        self.run.reporter.warning(f"out of memory at tile {img.plan.tile} on {img.job.input}: retrying with tile {tile}")
        img.generation += 1
        _plan(img, tile)
        self.enqueue(img)

    def new_accumulator(self, img: _Image) -> Any:
        from invsr_cli.tiling import BlendAccumulator

        torch = self.torch
        return BlendAccumulator(
            img.plan, mode=img.settings.blend,
            zeros=lambda shape: torch.zeros(shape, dtype=torch.float32, device=self.device),
            asarray=lambda a: torch.as_tensor(a, device=self.device),
        )

    # finishing and writing --------------------------------------------------------------------------------
    def finish_image(self, img: _Image) -> None:
        torch = self.torch
        hr = img.acc.result()  # (3, 4h, 4w) float32 on the device
        if img.settings.color_fix != "none":
            from invsr_cli.engine.colorfix import apply_color_fix

            lr = torch.from_numpy(img.loaded.rgb).permute(2, 0, 1)[None].to(self.device)
            ref = torch.nn.functional.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False)
            hr = apply_color_fix(img.settings.color_fix, hr[None], ref)[0]
        problem = _output_problem(torch, hr, img.loaded.rgb)
        if problem:
            self.fail_image(img, problem)
            return
        rgb = hr.clamp(0, 1).permute(1, 2, 0).contiguous().cpu().numpy()
        del self.inflight[img.index]
        img.acc = img.lr = None  # free device and host buffers now, not when the write ends
        fut = self.writers.submit(_write, img, rgb)
        self.writes.append((img, fut))
        while len(self.writes) > WRITERS * 2:
            self.collect_write()

    def collect_write(self) -> None:
        img, fut = self.writes.popleft()
        job = img.job
        try:
            w, h = fut.result()
        except DiskFullError as e:
            self.run.record(Outcome(str(job.input), str(job.output), "failed", reason=_reason(e, job)), job)
            self.run.stop_reason = f"disk full or I/O error writing {job.output}"
            return
        except InvSRError as e:
            self.run.record(Outcome(str(job.input), str(job.output), "failed", reason=_reason(e, job)), job)
            return
        except Exception as e:
            self.run.record(Outcome(str(job.input), str(job.output), "failed",
                                    reason=f"cannot write: {type(e).__name__}: {e}"), job)
            return
        s = img.settings
        self.run.record(Outcome(
            str(job.input), str(job.output), "done", seconds=round(time.perf_counter() - img.started, 3),
            width=w, height=h, tiles=len(img.plan.tiles), preset=s.preset, timesteps=s.timesteps,
            degradation=img.degradation,
        ), job)

    def fail_image(self, img: _Image, reason: str) -> None:
        if self.inflight.pop(img.index, None) is not None:
            self.fail_job(img.job, reason)

    def fail_job(self, job: Job, reason: str) -> None:
        self.run.record(Outcome(str(job.input), str(job.output), "failed", reason=reason), job)

    def loop(self) -> None:
        try:
            while not self.run.stopping:
                self.top_up()
                key = self.full_group()
                if key is not None:
                    self.run_group(key)
                elif self.reads:
                    self.take_read()  # more tiles are needed to fill a batch
                elif (key := self.oldest_group()) is not None:
                    self.run_group(key)  # a partial batch: nothing more is coming for this schedule
                else:
                    break
                while self.writes and self.writes[0][1].done():
                    self.collect_write()
        finally:
            # Stopping (signal, disk full) or done: finish the writes in flight; abandon unread and partial images.
            while self.writes:
                self.collect_write()
            for _, _, fut in self.reads:
                fut.cancel()
            self.readers.shutdown(wait=True, cancel_futures=True)
            self.writers.shutdown(wait=True)


def _compute(todo: list[tuple[int, Job]], run: _Run, engine: Any) -> None:
    _Compute(todo, run, engine).loop()


def _output_problem(torch: Any, hr: Any, lr_rgb: Any) -> str | None:
    """Why this output must not be written, or None. NaN/inf, or one flat colour from an input that was not."""
    if not bool(torch.isfinite(hr).all()):
        bad = int((~torch.isfinite(hr)).sum())
        return f"the model produced {bad} NaN/inf values (try --dtype fp32 or --vae-fp32); output not written"
    if float(hr.amax() - hr.amin()) < 1.0 / 255 and float(lr_rgb.max() - lr_rgb.min()) >= 4.0 / 255:
        return "the model produced a blank (single-colour) image from a non-blank input; output not written"
    return None


def _write(img: _Image, rgb: Any) -> tuple[int, int]:
    """Runs in a writer thread: re-attach alpha, resize to --scale, encode, write atomically."""
    from invsr_cli.imageio import resize_rgb, upscale_alpha, write_image
    from invsr_cli.provenance import provenance_record

    s = img.settings
    h, w = rgb.shape[:2]
    size = _output_size(img.loaded.width, img.loaded.height, s.scale)
    if size != (w, h):
        rgb = resize_rgb(rgb, size)
    alpha = upscale_alpha(img.loaded.alpha, size) if img.loaded.alpha is not None else None
    record = provenance_record(s.to_dict()) if s.provenance else None
    write_image(img.job.output, rgb, alpha=alpha, source=img.loaded, format=img.job.format, quality=s.quality,
                provenance=record, strip_metadata=s.strip_metadata, lossless=s.lossless)
    return size

