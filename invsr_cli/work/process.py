"""The unit of work: one image with its resolved settings. :func:`process_images` turns a sequence of image
tasks into outcomes, with an engine already loaded. The CLI's run, ``invsr bench`` and any worker (another device,
another process, a cluster node) call it; none of them records anything through it: the caller owns the
reporter, the manifest and the lock.

Per image: read (in a background thread, a bounded number ahead), choose its settings (the policy: fixed, or
``auto`` measuring the image), plan and pad its tiles. Tiles of consecutive images share engine batches when their
settings share a schedule (:mod:`invsr_cli.work.batching`); each tile is blended into its image's float32 accumulator
on the engine's device; a finished image goes to the sink (:mod:`invsr_cli.work.sink`), which writes it atomically in
the background. Out of memory halves the batch, then the image's tile, before failing that image.

An animation (:mod:`invsr_cli.imaging.animation`) is one image whose tiles are the tiles of all its frames, frame after
frame, so its frames share batches; the tile at one place has the same seed in every frame. A target above x4
(``passes: 2``, :mod:`invsr_cli.geometry.sizing`) is two passes of the same image: when the first pass's tiles are done, its
result, reduced to a quarter of the target, is re-planned and queued as the image's input again.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from invsr_cli.base.errors import DiskFullError, InvSRError, describe_exception, reason_of
from invsr_cli.settings.settings import ImageChoice, ImageSettings, RunSettings, Settings, SettingsPolicy
from invsr_cli.work.batching import Ran, Split, TileRef, TileScheduler, TooLarge, run_tiles
from invsr_cli.work.job import Job
from invsr_cli.work.report import Outcome, Reporter, failed, not_attempted
from invsr_cli.work.sink import ImageSink, Writer, check_output, write_output

__all__ = ["Engine", "ImageTask", "PreparedImage", "Processing", "process_images", "batch_size_for",
           "MIN_OOM_TILE", "fit_batch"]

MIN_OOM_TILE = 64  # LR px: the smallest tile the out-of-memory retry goes down to
CPU_BATCH = 1  # `--batch-size auto` on a CPU: batching buys nothing there and costs memory
MPS_BATCH = 4  # `--batch-size auto` on Apple MPS, which reports no free memory to measure
MAX_AUTO_BATCH = 32  # past this a GPU gains nothing more from batching; a bound on host memory too
AUTO_MARGIN = 0.8  # use at most this share of the free device memory
READERS = 2
FRAME_INDEX = 1 << 40  # video frames' task indices start here, above any run's own
STAGES = ("noise_predictor", "vae_encode", "unet", "vae_decode")


class Engine(Protocol):
    """What the processing needs of an engine (:class:`invsr_cli.engine.InvSREngine` is one)."""

    device: Any

    def upscale(self, lr: Any, *, timesteps: Sequence[int] | None = ..., seed: int | Sequence[int] = ...,
                posterior: str = ..., guidance: float = ..., check_finite: bool = ...) -> Any: ...


@dataclass(frozen=True)
class ImageTask:
    """One image to process: where it comes from and goes (``job``), its order in the run (``index``: batching
    finishes older images first), optionally its pixels already decoded (``image``, an
    :class:`invsr_cli.imaging.decode.LoadedImage`-like object; ``None`` reads ``job.input``), and its header as
    the driver probed it (``info``, an :class:`invsr_cli.work.inputs.InputInfo`; ``None``: read it with the
    pixels). With ``segment`` the task is one segment of a video (:mod:`invsr_cli.work.segment`): its frames
    are decoded one at a time and upscaled as stills, and its outcome is the segment's."""

    job: Job
    index: int = 0
    image: Any = None
    info: Any = None
    segment: Any = None  # a video segment (work.segment.SegmentSpec): job.output is the segment's file


@dataclass(eq=False)
class PreparedImage:
    """One image in flight: read, its settings chosen, tiled, its tiles partly computed. ``settings``: the run's
    and its own (``chosen.image``), the pair its outcome carries."""

    task: ImageTask
    chosen: ImageChoice
    loaded: Any  # imageio.LoadedImage, or animation.Animation (its frames are tiled together)
    started: float
    size: Any = None  # sizing.SizePlan: the output size and the passes it takes
    pass_no: int = 1
    plan: Any = None  # tiling.TilePlan, one frame's
    lr: Any = None  # padded LR, torch (3,H,W) float32 on the CPU; (F,3,H,W) for an animation
    accs: list[Any] = field(default_factory=list)  # per frame, tiling.BlendAccumulator on the device, lazily
    results: list[Any] = field(default_factory=list)  # per frame, the finished HR pixels (numpy), or None
    frame_tiles: list[int] = field(default_factory=list)  # per frame, the tiles blended so far
    done_tiles: int = 0
    generation: int = 0  # bumped when re-planned with a smaller tile after out-of-memory
    tiles_run: int = 0  # tiles of the earlier passes
    batch_sizes: list[int] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    # This image's own time: reading and planning it, its share of each batch it had tiles in (by its tiles in
    # the batch, as the stage seconds), blending its tiles, preparing a second pass. Not the wall time since it was
    # read: images whose tiles share batches would each count the shared batches as their own.
    own_seconds: float = 0.0
    run: RunSettings | None = None  # None: the defaults
    settings: Settings = field(init=False)

    def __post_init__(self) -> None:
        self.settings = Settings(self.run, self.chosen.image)

    @property
    def job(self) -> Job:
        return self.task.job

    @property
    def image(self) -> ImageSettings:
        return self.chosen.image

    @property
    def key(self) -> tuple:
        return (self.image.engine_key(), self.plan.tile)

    @property
    def frames(self) -> int:
        return len(getattr(self.loaded, "frames", (None,)))

    @property
    def n_tiles(self) -> int:
        """Tiles of every frame: an animation's frames are tiled like one image's, one after the other."""
        return len(self.plan.tiles) * self.frames

    def tile_lr(self, i: int) -> Any:
        """The LR pixels of tile ``i`` (frame ``i // tiles per frame``), (3, t, t)."""
        n, t = len(self.plan.tiles), self.plan.tile
        y, x = self.plan.tiles[i % n]
        lr = self.lr if self.lr.dim() == 3 else self.lr[i // n]
        return lr[:, y:y + t, x:x + t]

    def tile_seed(self, i: int) -> int:
        """Every frame's tile at one place gets the same seed, so a static area stays static."""
        return self.image.seed + i % len(self.plan.tiles)

    def replan(self, tile: int, *, pin: bool = False) -> None:
        """Plan (or re-plan, smaller) this image's tiles and pad its pixels to the plan."""
        import torch

        from invsr_cli.geometry.tiling import pad_image
        from invsr_cli.work.inputs import tile_plan

        frames = getattr(self.loaded, "frames", None)
        self.plan = tile_plan(self.loaded.width, self.loaded.height, self.image, tile, animated=frames is not None)
        if frames is None:
            lr = torch.from_numpy(pad_image(self.loaded.rgb, self.plan)).permute(2, 0, 1).contiguous()
        else:
            lr = torch.stack([torch.from_numpy(pad_image(f, self.plan)).permute(2, 0, 1) for f in frames])
        self.lr = lr.pin_memory() if pin else lr
        self.accs = [None] * self.frames
        self.results = [None] * self.frames
        self.frame_tiles = [0] * self.frames
        self.done_tiles = 0

    def next_pass(self, pin: bool = False) -> None:
        """Make the finished pass's result, reduced to the second pass's input size, this image's input."""
        from invsr_cli.imaging.encode import resize_rgb

        size = self.size.second_input
        if hasattr(self.loaded, "frames"):
            from invsr_cli.imaging.animation import resize_animation

            self.loaded = resize_animation(self.loaded, size, frames=self.results)
        else:
            rgb = resize_rgb(self.results[0], size)
            self.loaded = replace(self.loaded, rgb=rgb, width=size[0], height=size[1])
        self.pass_no += 1
        self.generation += 1
        self.replan(self.image.tile, pin=pin)

    def outcome(self, width: int, height: int, write_seconds: float, models: dict[str, Any] | None = None) -> Outcome:
        s = self.settings
        stages = {k: round(v, 4) for k, v in self.stage_seconds.items()}
        if stages:
            stages["write"] = round(write_seconds, 4)
        return Outcome(
            str(self.job.input), str(self.job.output), "done", seconds=round(self.own_seconds + write_seconds, 3),
            width=width, height=height, tiles=self.tiles_run + self.n_tiles, preset=s.preset, timesteps=s.timesteps,
            degradation=dict(self.chosen.degradation) if self.chosen.degradation is not None else None,
            rule=self.chosen.reason, tile=self.plan.tile, overlap=self.plan.overlap,
            batch_sizes=tuple(self.batch_sizes), stage_seconds=stages or None, settings=s, models=models,
            passes=self.pass_no, frames=self.frames,
        )


def fit_batch(free_bytes: int, per_tile_bytes: int, *, margin: float = AUTO_MARGIN, cap: int = MAX_AUTO_BATCH) -> int:
    """The largest batch whose measured per-tile memory fits ``margin`` of the free memory, within 1..cap.
    (A batch never holds more tiles than are waiting, so a small job never pays for a large batch.)"""
    return max(1, min(int(free_bytes * margin) // max(per_tile_bytes, 1), cap))


def batch_size_for(policy: SettingsPolicy, engine: Engine) -> int:
    """``--batch-size``: the number given, or ``auto``: 1 on a CPU, 4 on MPS, and on CUDA what fits in memory,
    measured with one tile of the largest tile size the policy can choose."""
    run = policy.run
    if run.batch_size != "auto":
        return int(run.batch_size)
    kind = str(getattr(engine, "device", "cpu")).split(":")[0]
    if kind == "cuda":
        largest = max(policy.choices.values(), key=lambda s: (s.tile, s.steps))
        return fit_batch(*_measure_cuda_tile(largest, engine))
    return MPS_BATCH if kind == "mps" else CPU_BATCH


def _measure_cuda_tile(settings: ImageSettings, engine: Engine) -> tuple[int, int]:
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


def _prepare(task: ImageTask, policy: SettingsPolicy, pin: bool) -> PreparedImage:
    """Read, choose settings, plan and pad one image. Runs in a reader thread."""
    from invsr_cli.work.inputs import check_container, plan_for, read_input

    started = time.perf_counter()
    run = policy.run
    if task.image is not None:
        loaded, source = task.image, (task.image.width, task.image.height)
    else:
        loaded, source = read_input(task.job.input, run, task.info)
        check_container(task.job, len(getattr(loaded, "frames", ())))
    img = PreparedImage(task, policy.for_image(loaded.rgb), loaded, started, run=run)
    img.size = plan_for(task.job.input, *source, img.frames, img.image, run)
    check_output(task.job, loaded, img.settings, img.size.passes)  # metadata the format cannot hold fails now, not after compute
    img.replan(img.image.tile, pin=pin)
    img.own_seconds = time.perf_counter() - started
    return img


def _prepare_frame(task: ImageTask, chosen: ImageChoice, run: RunSettings, pin: bool) -> PreparedImage:
    """Plan and pad one decoded video frame (a still) with its video's settings. Runs in a reader thread."""
    from invsr_cli.geometry.sizing import input_size
    from invsr_cli.work.inputs import check_pixels, plan_for, reduce_still

    started = time.perf_counter()
    loaded = task.image
    source = (loaded.width, loaded.height)
    check_pixels(task.job.input, input_size(*source, run.max_input_side), 1, run.max_pixels)  # one frame
    loaded = reduce_still(loaded, input_size(*source, run.max_input_side))
    img = PreparedImage(task, chosen, loaded, started, run=run)
    img.size = plan_for(task.job.input, *source, 1, img.image, run)
    img.replan(img.image.tile, pin=pin)
    img.own_seconds = time.perf_counter() - started
    return img


def process_images(
    tasks: Iterable[ImageTask],
    policy: SettingsPolicy,
    engine: Engine,
    *,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    write: Writer = write_output,
    timer: Any = None,
    finish_in_flight: bool = False,
) -> Processing:
    """Upscale ``tasks`` with ``engine``; iterate the result for one :class:`Outcome` per task that was attempted
    ("done" or "failed", in completion order).

    ``policy`` gives each image its settings when it is read. ``reporter`` hears tile progress and warnings (out of
    memory); it is not given outcomes. ``should_stop`` is polled between batches: once true, no new batch starts,
    the writes in flight finish and their outcomes come, and the images not finished are abandoned unreported.
    ``write(image, rgb, models)`` writes one finished image (default: atomically to ``image.job.output``, with
    its provenance) and returns its size. ``timer`` (an :class:`invsr_cli.engine.timing.StageTimer` attached to ``engine``) adds per-image stage
    seconds to the outcomes: a batch's stage time is shared among its images by their tiles in it.

    A full disk stops the run: :attr:`Processing.stopped` says why, and every task not yet finished gets a failed
    outcome "not attempted: disk full".
    """
    return Processing(tasks, policy, engine, reporter or Reporter(), should_stop, write, timer, finish_in_flight)


class Processing:
    """The iterator :func:`process_images` returns; ``stopped`` is set when a full disk ended it early."""

    def __init__(self, tasks: Iterable[ImageTask], policy: SettingsPolicy, engine: Engine, reporter: Reporter,
                 should_stop: Callable[[], bool], write: Writer,
                 timer: Any, finish_in_flight: bool = False) -> None:
        import torch

        self.torch = torch
        self.policy = policy
        self.engine = engine
        self.reporter = reporter
        self.should_stop = should_stop
        self.finish_in_flight = finish_in_flight
        self.timer = timer
        self.device = engine.device
        self.pin = str(self.device).startswith("cuda") and torch.cuda.is_available()
        self.scheduler = TileScheduler(batch_size_for(policy, engine))
        # Images read ahead of the compute: enough to fill a batch for every schedule the policy can choose (so a
        # folder mixing schedules still fills batches), and a couple more. Bounded, whatever the number of inputs.
        schedules = {s.engine_key() for s in policy.choices.values()}
        self.cap = self.scheduler.batch * len(schedules) + 2
        self.todo: Iterator[ImageTask] = iter(tasks)
        self.todo_done = False
        self.draining = False  # stopping with finish_in_flight: nothing more is read
        self.reads: deque[tuple[ImageTask, Future]] = deque()
        self.inflight: dict[int, PreparedImage] = {}
        self.sink = ImageSink(self.device, write, blend_stage=self._stage,
                              models=getattr(engine, "identity", None))
        self.readers = ThreadPoolExecutor(READERS, thread_name_prefix="invsr-read")
        # Video segments (work.segment): the ones started, by their file; the one whose frames are being read;
        # each frame's task index -> (its segment, its number in it). Frame indices follow the run's own.
        self.segments: dict[str, Any] = {}
        self.ended_segments: set[str] = set()
        self.current: Any = None
        self.frame_of: dict[int, tuple[Any, int]] = {}
        self.frame_ids = itertools.count(FRAME_INDEX)
        self.segment_outcomes: deque[Outcome] = deque()
        self._stopped: str | None = None
        self._outcomes = self._run()

    @property
    def stopped(self) -> str | None:
        return self.sink.stopped or self._stopped

    def __iter__(self) -> Iterator[Outcome]:
        return self._outcomes

    def __next__(self) -> Outcome:
        return next(self._outcomes)

    # reading ------------------------------------------------------------------------------------------------
    def _top_up(self) -> None:
        while len(self.reads) + len(self.inflight) < self.cap:
            if self.current is not None and not self.current.exhausted:
                self._read_frame(self.current)  # a segment's frames are read one after the other
                continue
            self.current = None
            if self.todo_done:
                return
            task = next(self.todo, None)
            if task is None:
                self.todo_done = True
                return
            if task.segment is not None:
                self._start_segment(task)
                continue
            self.reads.append((task, self.readers.submit(_prepare, task, self.policy, self.pin)))

    # video segments ---------------------------------------------------------------------------------------------
    def _start_segment(self, task: ImageTask) -> None:
        """Choose the video's settings (``auto``: from its first frame, the same in every segment) and open the
        segment's decoder and encoder."""
        from invsr_cli.work.segment import SegmentInFlight

        try:
            rgb = None
            if self.policy.measures:
                import numpy as np

                from invsr_cli.imaging.video import first_frame

                rgb = first_frame(task.segment.video).astype(np.float32) * np.float32(1 / 255)
            seg = SegmentInFlight(task, self.policy.for_image(rgb))
        except InvSRError as e:
            self.segment_outcomes.append(failed(task, reason_of(e, task.job)))
            return
        except Exception as e:  # noqa: BLE001 - one hostile video fails alone
            self.segment_outcomes.append(self._failed_by(task, e, "cannot read: "))
            return
        self.segments[str(task.job.output)] = seg
        self.current = seg

    def _read_frame(self, seg: Any) -> None:
        """Decode the segment's next frame (here: one decoder per segment) and queue it to be planned."""
        try:
            n, loaded = seg.next_frame()
        except InvSRError as e:
            self._segment_failed(seg, reason_of(e, seg.job))
            return
        except Exception as e:  # noqa: BLE001 - a decoder bug on one hostile file fails that segment alone
            self._segment_failed(seg, self._failed_by(seg.task, e, "cannot read: ").reason)
            return
        task = ImageTask(seg.job, next(self.frame_ids), image=loaded)
        self.frame_of[task.index] = (seg, n)
        self.reads.append((task, self.readers.submit(_prepare_frame, task, seg.choice, self.policy.run, self.pin)))

    def _segment_failed(self, seg: Any, reason: str) -> None:
        outcome = seg.fail(reason)
        for index, (s, _) in list(self.frame_of.items()):  # its frames in flight are dropped (those still being
            if s is seg and index in self.inflight:        # read are dropped when taken: _take_read)
                del self.frame_of[index]
                del self.inflight[index]
        if outcome is not None:
            self.segment_outcomes.append(outcome)

    def _frame_done(self, img: PreparedImage) -> None:
        seg, n = self.frame_of.pop(img.task.index)
        if seg.ended:
            return
        try:
            seg.frame_done(n, img)
        except DiskFullError as e:
            self._stopped = f"disk full or I/O error writing {seg.job.output}"
            self._segment_failed(seg, reason_of(e, seg.job))
            return
        except InvSRError as e:
            self._segment_failed(seg, reason_of(e, seg.job))
            return
        spec = seg.spec
        self.reporter.frame_done(f"{seg.job.input} (segment {spec.index + 1}/{spec.count})", seg.next_out,
                                 spec.frames)

    def _segments_ready(self, wait: bool = False) -> Iterator[Outcome]:
        """The outcomes of segments whose encoder has finished (``wait``: of every segment finishing), and of
        segments that failed."""
        while self.segment_outcomes:
            yield self.segment_outcomes.popleft()
        for seg in list(self.segments.values()):
            if seg.ended or not seg.finishing or not (wait or seg.writer.done()):
                continue
            try:
                outcome = seg.outcome(getattr(self.engine, "identity", None))
            except DiskFullError as e:
                self._stopped = f"disk full or I/O error writing {seg.job.output}"
                outcome = failed(seg.task, reason_of(e, seg.job))
            except InvSRError as e:
                outcome = failed(seg.task, reason_of(e, seg.job))
            except Exception as e:  # noqa: BLE001 - an encoder bug fails that segment alone
                outcome = failed(seg.task, f"cannot write: {describe_exception(e)}")
            seg.result = outcome
            yield outcome

    def _route(self, outcomes: Iterator[Outcome]) -> Iterator[Outcome]:
        """A video frame's own failure (read, compute, stop) fails its segment, once; every other outcome passes."""
        for o in outcomes:
            if o.output in self.ended_segments:
                continue  # a frame of a segment that has its outcome already
            seg = self.segments.get(o.output)
            if seg is not None and o is seg.result:  # the segment's own outcome: it is over, keep nothing of it
                del self.segments[o.output]
                self.ended_segments.add(o.output)
            if seg is None or o is seg.result:
                yield o
                continue
            self._segment_failed(seg, o.reason)
            yield from self._segments_ready()

    def _drop_unread(self) -> None:
        """Stopping: read nothing more (the images not yet read, and the frames of a segment being read, are left
        for a later run)."""
        self.todo_done = self.draining = True
        while self.reads:
            self.reads.popleft()[1].cancel()

    def _take_read(self) -> Iterator[Outcome]:
        task, fut = self.reads.popleft()
        if task.index in self.frame_of and self.frame_of[task.index][0].ended:
            fut.cancel()  # a frame of a segment that failed meanwhile
            del self.frame_of[task.index]
            return
        try:
            img = fut.result()
        except InvSRError as e:
            yield failed(task, reason_of(e, task.job))
            return
        except Exception as e:  # a decoder bug on one hostile file must not end the batch
            yield self._failed_by(task, e, "cannot read: ")
            return
        self.inflight[task.index] = img
        self._enqueue(img)

    def _enqueue(self, img: PreparedImage) -> None:
        self.scheduler.add(img.key, img.task.index, img.n_tiles, img.generation)
        self.reporter.tiles_planned(img.n_tiles)

    # compute ------------------------------------------------------------------------------------------------
    def _live(self, ref: TileRef) -> bool:
        img = self.inflight.get(ref.image)
        return img is not None and img.generation == ref.generation

    def _upscale(self, refs: list[TileRef]) -> Any:
        torch = self.torch
        start = time.perf_counter()
        imgs = [self.inflight[r.image] for r in refs]
        s = imgs[0].image
        lr = torch.stack([img.tile_lr(r.tile) for img, r in zip(imgs, refs, strict=True)])
        lr = lr.to(self.device, non_blocking=self.pin)
        seeds = [img.tile_seed(r.tile) for img, r in zip(imgs, refs, strict=True)]
        before = dict(self.timer.seconds) if self.timer is not None else None
        out = self.engine.upscale(lr, timesteps=s.timesteps, seed=seeds, posterior=s.posterior,
                                  guidance=s.guidance, check_finite=False)
        if before is not None:
            for img in imgs:  # each image's share of the batch's stage time, by its tiles in the batch
                share = sum(1 for i in imgs if i is img) / len(imgs)
                for stage in STAGES:
                    img.stage_seconds[stage] += share * (self.timer.seconds.get(stage, 0.0) - before.get(stage, 0.0))
        took = time.perf_counter() - start
        for img in imgs:  # each tile's image gets its part of the batch's time
            img.own_seconds += took / len(imgs)
        return out

    def _run_batch(self, refs: list[TileRef]) -> Iterator[Outcome]:
        ran: set[int] = set()  # id() of the refs computed and blended
        try:
            for event in run_tiles(self._upscale, refs, oom=self.torch.OutOfMemoryError, live=self._live):
                if isinstance(event, Ran):
                    yield from self._blend(event.items, event.outputs)
                    ran.update(id(r) for r in event.items)
                elif isinstance(event, Split):
                    self._empty_cache()
                    self.scheduler.batch = event.new_size
                    self.reporter.warning(f"out of memory at batch {event.size}: retrying with batch "
                                          f"{event.new_size}")
                elif isinstance(event, TooLarge):
                    self._empty_cache()
                    yield from self._smaller_tile(self.inflight[event.item.image])
        except InvSRError as e:
            for index in dict.fromkeys(r.image for r in refs):
                if index in self.inflight:
                    yield failed(self.inflight.pop(index), str(e))
        except Exception as e:  # noqa: BLE001 - the engine failed on this batch: pin it on its image
            yield from self._batch_failed(refs, ran, e)

    def _batch_failed(self, refs: list[TileRef], ran: set[int], e: Exception) -> Iterator[Outcome]:
        """An unexpected error computing a batch fails the image it came from, and only that one: a batch of one
        image's tiles fails that image; a batch shared by several runs the tiles left again one image at a time
        (a tile's result does not depend on its batch), so the error comes back from the image that causes it."""
        rest = [r for r in refs if id(r) not in ran and self._live(r)]
        images = list(dict.fromkeys(r.image for r in rest))
        if len(images) == 1:
            yield self._failed_by(self.inflight.pop(images[0]), e)
            return
        for index in images:
            yield from self._run_batch([r for r in rest if r.image == index])

    def _failed_by(self, of: Any, e: BaseException, prefix: str = "") -> Outcome:
        """The failed outcome of an image an unexpected error stopped: its type and message; the traceback under
        -v (the reporter's info)."""
        import traceback

        job = of.job
        self.reporter.info(f"{job.input}: {describe_exception(e)}\n"
                           + "".join(traceback.format_exception(e)).rstrip())
        return failed(of, prefix + describe_exception(e))

    def _empty_cache(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def _smaller_tile(self, img: PreparedImage) -> Iterator[Outcome]:
        tile = img.plan.tile // 2
        if tile < MIN_OOM_TILE or tile % 16:
            del self.inflight[img.task.index]
            yield failed(img, f"out of memory even at batch 1 and tile {img.plan.tile}")
            return
        old = img.plan.tile
        img.generation += 1
        try:
            img.replan(tile, pin=self.pin)
        except Exception as e:  # noqa: BLE001 - its tiles are stale now: fail it here or it would never end
            del self.inflight[img.task.index]
            yield self._failed_by(img, e)
            return
        self.reporter.warning(f"out of memory at tile {old} on {img.job.input}: retrying with tile {tile} "
                              f"(overlap {img.plan.overlap})")
        self._enqueue(img)

    def _blend(self, refs: list[TileRef], outputs: Any) -> Iterator[Outcome]:
        self.reporter.tiles_done(len(refs))
        for index in dict.fromkeys(r.image for r in refs):
            self.inflight[index].batch_sizes.append(len(refs))
        for ref, tile_out in zip(refs, outputs, strict=True):
            img = self.inflight.get(ref.image)
            if img is None:  # failed by an earlier frame of this batch
                continue
            try:
                yield from self._blend_tile(img, ref, tile_out)
            except InvSRError as e:
                self.inflight.pop(ref.image, None)
                yield failed(img, reason_of(e, img.job))
            except Exception as e:  # noqa: BLE001 - a bug on one image (blending, colour fix, a pass) fails it alone
                self.inflight.pop(ref.image, None)
                yield self._failed_by(img, e)

    def _blend_tile(self, img: PreparedImage, ref: TileRef, tile_out: Any) -> Iterator[Outcome]:
        n = len(img.plan.tiles)
        f = ref.tile // n
        start = time.perf_counter()
        with self._stage("blend"):
            if img.accs[f] is None:
                img.accs[f] = self._accumulator(img)
            img.accs[f].add(ref.tile % n, tile_out)
        img.done_tiles += 1
        img.frame_tiles[f] += 1
        problem = None
        if img.frame_tiles[f] == n:  # a frame is done: colour-fix, check and keep it, free its buffers
            problem = self.sink.frame_result(img, f)
        img.own_seconds += time.perf_counter() - start
        if img.frame_tiles[f] == n:
            if problem:
                del self.inflight[ref.image]
                yield failed(img, problem if img.frames == 1 else f"frame {f + 1}: {problem}")
                return
            if img.frames > 1:
                self.reporter.frame_done(str(img.job.input), img.done_tiles // n, img.frames)
        if img.done_tiles == img.n_tiles:
            yield from self._image_done(img)

    def _image_done(self, img: PreparedImage) -> Iterator[Outcome]:
        """Every tile of the pass is done: start the next pass (its input: this pass's result), or write it."""
        if img.pass_no < img.size.passes:
            img.tiles_run += img.n_tiles
            start = time.perf_counter()
            img.next_pass(pin=self.pin)
            img.own_seconds += time.perf_counter() - start
            self._enqueue(img)
            return
        del self.inflight[img.task.index]
        if img.task.index in self.frame_of:
            self._frame_done(img)  # a video frame goes to its segment's encoder
            return
        yield from self.sink.finish(img)

    def _stage(self, name: str) -> Any:
        return self.timer.stage(name) if self.timer is not None else contextlib.nullcontext()

    def _accumulator(self, img: PreparedImage) -> Any:
        from invsr_cli.geometry.tiling import BlendAccumulator

        torch = self.torch
        return BlendAccumulator(
            img.plan, mode=img.image.blend,
            zeros=lambda shape: torch.zeros(shape, dtype=torch.float32, device=self.device),
            asarray=lambda a: torch.as_tensor(a, device=self.device),
        )

    # the loop -----------------------------------------------------------------------------------------------
    def _run(self) -> Iterator[Outcome]:
        yield from self._route(self._loop())

    def _loop(self) -> Iterator[Outcome]:
        try:
            while self.stopped is None:
                if self.should_stop():
                    if not self.finish_in_flight:
                        break
                    self._drop_unread()  # then finish what is in flight
                else:
                    self._top_up()
                batch = self.scheduler.next_batch(more_coming=bool(self.reads))
                if batch is not None:
                    yield from self._run_batch(batch[1])
                elif self.reads:
                    yield from self._take_read()  # more tiles are needed to fill a batch
                elif self.current is not None and not self.current.exhausted and not self.draining:
                    continue  # the segment being read has more frames: _top_up reads them
                else:
                    break
                yield from self.sink.ready()
                yield from self._segments_ready()
            # Stopping (signal, disk full) or done: finish the writes in flight.
            yield from self.sink.drain()
            yield from self._segments_ready(wait=True)
            if self.stopped is not None:
                yield from self._not_attempted()
        finally:
            for _, fut in self.reads:
                fut.cancel()
            self.readers.shutdown(wait=True, cancel_futures=True)
            self.sink.close()
            for seg in self.segments.values():
                seg.close()  # a segment not finished leaves no file

    def _not_attempted(self) -> Iterator[Outcome]:
        for img in list(self.inflight.values()):
            yield not_attempted(img, self.stopped)
        self.inflight.clear()
        while self.reads:
            yield not_attempted(self.reads.popleft()[0], self.stopped)
        for seg in list(self.segments.values()):  # a segment with no frame in flight right now
            if not seg.ended:
                yield not_attempted(seg.task, self.stopped)
        for task in self.todo:
            yield not_attempted(task, self.stopped)
