"""``--devices``: one worker process per device entry (``cuda:0,cuda:1``; ``all``; a device may repeat, so
``cpu,cpu`` runs two CPU workers), each with its own engine, pulling whole images from one queue.

How it runs
-----------
* Workers are started with ``spawn`` (never ``fork``: a forked CUDA runtime is unusable). The parent process never
  initialises CUDA: it imports no engine, and ``all`` counts devices with :func:`torch.cuda.device_count`, which
  asks NVML and creates no CUDA context.
* Each worker loads its engine once (the run's settings with its own device; CPU workers split the cores between
  them: ``torch.set_num_threads(cores // cpu workers)``, at most ``OMP_NUM_THREADS`` when that is set), then runs
  :func:`invsr_cli.work.process.process_images` on the images it pulls, writing the outputs itself (atomically, as in
  one process) and sending each :class:`~invsr_cli.work.report.Outcome` back. The parent yields them to the driver,
  which owns the lock, the manifest and the report (:func:`invsr_cli.run.runner.run_batch`).
* The queue is the parent's, largest image first (header sizes, :func:`invsr_cli.imaging.decode.probe_image`), so the
  last images to start are the smallest and no device idles long at the end. Workers pull from it over their own
  pipe. (Not a shared ``multiprocessing.Queue``: its readers share a lock, and a worker killed while holding it
  would hang every other worker. A pipe per worker has nothing to leave held, and the parent knows exactly which
  images each worker holds.) A worker reads a few images ahead, as one process does, to fill its engine batches.
* A worker that dies (killed, segfault, CUDA error) is reported. Every image it held is retried once, alone, on
  another worker; an image held by a worker that dies twice is marked failed ("worker on cpu died (exit -9)
  twice"), so one poisonous image cannot take the run down with it. Temporary files of the dead worker's outputs
  are removed. A new worker is started in the dead one's place (at most twice per entry: a device that keeps
  failing is given up); the run goes on, and when no worker is left the images not done are failed "not
  attempted".
* SIGINT/SIGTERM (the driver's ``should_stop``): the workers stop taking images, finish their writes in flight
  and exit; images not finished are left unreported, as in one process. Workers ignore SIGINT and SIGTERM
  themselves (a terminal's Ctrl-C or a scheduler's group-wide SIGTERM reaches them too): only the parent decides.
  A worker whose parent is gone stops at the next batch.
* A full disk on any worker stops the run; every image not done gets a failed outcome "not attempted: ...".

The worker process is :mod:`invsr_cli.run.executors.devices_worker`. Tests inject faults by passing a ``loader``
(an engine that raises) or a ``write`` (a worker that dies mid-image), both picklable, never by environment.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from invsr_cli.base.errors import ConfigError
from invsr_cli.run.executors import RunContext, load_engine, models_line
from invsr_cli.settings.settings import Settings, SettingsPolicy
from invsr_cli.work.process import ImageTask
from invsr_cli.work.report import Outcome, failed, not_attempted
from invsr_cli.work.sink import Writer

__all__ = ["DevicesExecutor", "parse_devices", "cuda_device_count"]

POLL_SECONDS = 0.2  # how often the parent looks at the stop signal while it waits for workers
DEATHS_BEFORE_FAILED = 2  # an image held by this many dying workers is marked failed
MAX_RESTARTS = 2  # a slot whose worker died this many times is not restarted again (a broken device)


def cuda_device_count() -> int:
    """Visible CUDA devices, counted without initialising CUDA in this process (NVML; CUDA_VISIBLE_DEVICES
    applies)."""
    import torch

    return int(torch.cuda.device_count())


def parse_devices(text: str, count_cuda: Callable[[], int] = cuda_device_count) -> list[str]:
    """``cuda:0,cuda:1`` / ``cpu,cpu`` / ``all`` -> the device of each worker. ``cuda`` means ``cuda:0``.
    Raises :class:`ConfigError` naming the bad entry."""
    text = (text or "").strip().lower()
    if text == "all":
        n = count_cuda()
        if n < 1:
            raise ConfigError("`devices` all: no CUDA device is visible (check CUDA_VISIBLE_DEVICES and the driver); "
                              "name the devices, e.g. --devices cpu,cpu")
        return [f"cuda:{i}" for i in range(n)]
    from invsr_cli.engine.devices import parse_device

    out = []
    for entry in (e.strip() for e in text.split(",")):
        try:
            device = parse_device(entry)
        except ValueError:
            device = "auto"  # refused just below, with this list's own message
        if device == "auto":
            raise ConfigError(f"`devices` entries must be cpu, mps, cuda or cuda:N (or the whole list `all`), got "
                              f"{entry!r} in {text!r}")
        out.append("cuda:0" if device == "cuda" else device)
    return out


@dataclass
class _Item:
    task: ImageTask
    size: int  # pixels by the header; 0 when unreadable (the worker reports why)
    deaths: list[str] = field(default_factory=list)  # "cpu (exit -9)" per worker that died holding it


@dataclass
class _Worker:
    wid: int
    device: str
    proc: Any
    conn: Any
    ready: bool = False
    waiting: bool = False  # asked for work with nothing in flight: answer when there is some
    held: dict[int, _Item] = field(default_factory=dict)  # index -> item: handed out, no outcome yet
    gone: bool = False
    said_bye: bool = False
    restarts: int = 0  # how many workers in this slot died before this one


class DevicesExecutor:
    """Run images on one worker process per entry of ``devices`` (see the module docstring).

    ``loader(settings)`` loads a worker's engine (``settings.device`` is the worker's); it must be picklable (a
    module-level function). ``threads``: torch threads per CPU worker (default: the cores split between them).
    ``write``: the workers' writer (picklable; default :func:`invsr_cli.work.sink.write_output`), for tests that
    make a worker die mid-image.
    """

    def __init__(self, devices: Sequence[str], *, loader: Callable[[Settings], Any] = load_engine,
                 threads: int | None = None, write: Writer | None = None) -> None:
        if not devices:
            raise ConfigError("`devices` needs at least one device")
        self.devices = list(devices)
        self.loader = loader
        self.threads = threads
        self.write = write
        self.stopped: str | None = None
        # What the workers spent on messages (and on restarting process_images) rather than computing, summed
        # over the workers, and the images they finished: the executor's own cost per image.
        self.cost: dict[str, float] = {"worker_seconds": 0.0, "images": 0}

    def _threads(self, device: str) -> int:
        if self.threads:
            return self.threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        cpu_workers = sum(1 for d in self.devices if d == "cpu")
        n = max(1, cores // cpu_workers) if device == "cpu" else max(1, cores // len(self.devices))
        omp = os.environ.get("OMP_NUM_THREADS", "")
        return min(n, int(omp)) if omp.isdigit() and int(omp) > 0 else n

    def run(self, tasks: Sequence[ImageTask], policy: SettingsPolicy, ctx: RunContext) -> Iterator[Outcome]:
        if not tasks or ctx.should_stop():
            return
        yield from _Run(self, tasks, policy, ctx).outcomes()


class _Run:
    """One run of a :class:`DevicesExecutor`: the workers, the queue, and who holds what."""

    def __init__(self, ex: DevicesExecutor, tasks: Sequence[ImageTask], policy: SettingsPolicy,
                 ctx: RunContext) -> None:
        self.ex = ex
        self.policy = policy
        self.ctx = ctx
        self.reporter = ctx.reporter
        self.queue: deque[_Item] = deque(_largest_first(tasks, policy.settings.max_pixels))
        self.retries: deque[_Item] = deque()
        self.unresolved = len(self.queue)
        self.workers: list[_Worker] = []
        self.stopping = False
        self.flag: Any = None

    # the run ---------------------------------------------------------------------------------------------------
    def outcomes(self) -> Iterator[Outcome]:
        import multiprocessing as mp
        from multiprocessing.connection import wait

        spawn = mp.get_context("spawn")
        self.flag = spawn.RawValue("b", 0)  # 1: stop taking images (no lock: nothing a dying worker can hold)
        verbose = bool(getattr(self.reporter, "verbose", False))
        names = ", ".join(self.ex.devices)
        self.reporter.info(f"starting {len(self.ex.devices)} worker(s): {names}; loading the models in each: "
                           f"{models_line(self.policy.settings)}")
        try:
            self.spawn, self.verbose = spawn, verbose
            for wid, device in enumerate(self.ex.devices):
                self._start(wid, device)
            while any(not w.gone for w in self.workers):
                if self.ctx.should_stop() and not self.stopping:
                    self._stop()
                live = [w for w in self.workers if not w.gone]
                ready = wait([w.conn for w in live] + [w.proc.sentinel for w in live], timeout=POLL_SECONDS)
                for w in live:
                    if w.conn in ready:
                        yield from self._read(w)
                for w in live:
                    if w.proc.sentinel in ready and not w.gone:
                        yield from self._exited(w)
                if not any(not w.gone for w in self.workers) and not self.stopping:
                    yield from self._nobody_left()
            cost = self.ex.cost
            if cost["images"]:
                self.reporter.info(f"workers' messaging cost: {1000 * cost['worker_seconds'] / cost['images']:.2f} ms "
                                   "per image")
            if self.ex.stopped is not None:
                yield from self._not_attempted(self.ex.stopped)
        finally:
            self._shutdown()

    def _start(self, wid: int, device: str, restarts: int = 0) -> None:
        from invsr_cli.run.executors.devices_worker import worker_main

        parent_end, child_end = self.spawn.Pipe()
        proc = self.spawn.Process(
            target=worker_main, name=f"invsr-worker-{wid}-{device}", daemon=True,
            args=(wid, device, self.ex._threads(device), self.policy, self.ex.loader, child_end, self.flag,
                  self.verbose, self.ex.write))
        proc.start()
        child_end.close()
        self.workers.append(_Worker(wid, device, proc, parent_end, restarts=restarts))

    def _stop(self) -> None:
        """A signal: no new images; workers finish their writes in flight. A worker still loading is ended now
        (it has written nothing)."""
        self.stopping = True
        self.flag.value = 1
        for w in self.workers:
            if not w.gone and not w.ready:
                w.proc.kill()
            elif not w.gone and w.waiting:
                self._send(w, ("end",))

    def _shutdown(self) -> None:
        """Normally every worker has exited by now; after an exception or a second Ctrl-C in the parent, end the
        ones left (their temporary files are removed by the next run, as after any interruption)."""
        if self.flag is not None:
            self.flag.value = 1
        for w in self.workers:
            if w.proc.is_alive():
                w.proc.kill()
            w.proc.join()
            w.conn.close()

    # messages --------------------------------------------------------------------------------------------------
    def _send(self, w: _Worker, msg: tuple) -> None:
        try:
            w.conn.send(msg)
        except OSError:
            pass  # it died; its sentinel tells

    def _read(self, w: _Worker) -> Iterator[Outcome]:
        while not w.gone:
            try:
                if not w.conn.poll():
                    return
                msg = w.conn.recv()
            except (EOFError, OSError):
                return  # died mid-message; its sentinel tells
            yield from self._handle(w, msg)

    def _handle(self, w: _Worker, msg: tuple) -> Iterator[Outcome]:
        kind = msg[0]
        if kind == "want":
            self._want(w, block=msg[1])
        elif kind == "outcome":
            self._tiles(*msg[3:5])
            item = w.held.pop(msg[1], None)
            if item is not None:
                self.unresolved -= 1
                yield msg[2]
                self._maybe_end()
        elif kind == "tiles":
            self._tiles(msg[1], msg[2])
        elif kind == "warning":
            self.reporter.warning(f"{w.device} worker {w.wid}: {msg[1]}")
        elif kind == "info":
            self.reporter.info(f"{w.device} worker {w.wid}: {msg[1]}")
        elif kind == "ready":
            w.ready = True
            if self.stopping:
                self._send(w, ("end",))
        elif kind == "stopped":  # a full disk: every later write would fail too
            self.ex.stopped = self.ex.stopped or msg[1]
            self.flag.value = 1
            self._end_waiting()
        elif kind == "load_failed":
            raise msg[1]
        elif kind == "cost":
            self.ex.cost["worker_seconds"] += msg[1]
            self.ex.cost["images"] += msg[2]
        elif kind == "bye":
            w.said_bye = True

    def _tiles(self, planned: int, done: int) -> None:
        if planned:
            self.reporter.tiles_planned(planned)
        if done:
            self.reporter.tiles_done(done)

    def _want(self, w: _Worker, *, block: bool) -> None:
        """Hand ``w`` the next image. A retried image goes only to a worker holding nothing, and alone, so a
        second death names the image that caused it."""
        if self.stopping or self.ex.stopped is not None:
            self._send(w, ("end",))
            return
        if block and self.retries:
            item = self.retries.popleft()
            w.held[item.task.index] = item
            self._send(w, ("task", item.task, True))
        elif self.queue:
            item = self.queue.popleft()
            w.held[item.task.index] = item
            self._send(w, ("task", item.task, False))
        elif not block:
            self._send(w, ("none",))  # finish what you hold, then ask again
        elif self.unresolved == 0:
            self._send(w, ("end",))
        else:
            w.waiting = True  # others still hold images that may come back as retries

    def _maybe_end(self) -> None:
        if self.unresolved == 0:
            self._end_waiting()

    def _end_waiting(self) -> None:
        for w in self.workers:
            if w.waiting and not w.gone:
                w.waiting = False
                self._send(w, ("end",))

    def _wake_waiting(self) -> None:
        for w in self.workers:
            if w.waiting and not w.gone and (self.retries or self.queue):
                w.waiting = False
                self._want(w, block=True)

    # deaths ----------------------------------------------------------------------------------------------------
    def _exited(self, w: _Worker) -> Iterator[Outcome]:
        yield from self._read(w)  # what it said before it went
        w.proc.join()
        w.gone = True
        code = w.proc.exitcode
        if w.said_bye and code == 0:
            return
        if self.stopping and not w.ready:
            return  # ended while loading, by us
        why = f"worker on {w.device} died (exit {code})"
        held = list(w.held.values())
        w.held.clear()
        self.reporter.warning(f"{why}" + (f" holding {len(held)} image(s); retrying them on the other workers"
                                          if held else ""))
        from invsr_cli.base.atomic import remove_temps_of

        remove_temps_of([item.task.job.output for item in held])
        if self.unresolved - sum(len(item.deaths) + 1 >= DEATHS_BEFORE_FAILED for item in held) > 0 \
                and w.restarts < MAX_RESTARTS and self.ex.stopped is None and not self.stopping:
            self.reporter.warning(f"starting a new worker on {w.device} in its place")
            self._start(w.wid, w.device, w.restarts + 1)
        for item in held:
            item.deaths.append(f"{w.device} (exit {code})")
            if len(item.deaths) >= DEATHS_BEFORE_FAILED:
                self.unresolved -= 1
                yield failed(item.task, f"worker died twice holding it: on {' and on '.join(item.deaths)}")
            else:
                self.retries.append(item)
        self._wake_waiting()
        self._maybe_end()

    def _nobody_left(self) -> Iterator[Outcome]:
        if self.unresolved and self.ex.stopped is None:
            self.reporter.warning("no worker is left; the images not done are failed")
            yield from self._not_attempted("no worker left (every worker died)")

    def _not_attempted(self, why: str) -> Iterator[Outcome]:
        items = [*self.retries, *self.queue] + [i for w in self.workers for i in w.held.values()]
        self.retries.clear()
        self.queue.clear()
        for w in self.workers:
            w.held.clear()
        for item in sorted(items, key=lambda i: i.task.index):
            self.unresolved -= 1
            yield not_attempted(item.task, why)


def _largest_first(tasks: Sequence[ImageTask], max_pixels: int | None) -> list[_Item]:
    from invsr_cli.imaging.decode import probe_image

    items = []
    for task in tasks:
        try:
            info = probe_image(task.job.input, max_pixels=max_pixels)
            size = info.width * info.height
        except Exception:  # the worker reads it again and reports why it cannot
            size = 0
        items.append(_Item(task, size))
    items.sort(key=lambda i: (-i.size, i.task.index))
    return items
