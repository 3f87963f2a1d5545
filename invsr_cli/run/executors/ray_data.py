"""A Ray cluster as the executor (``invsr upscale --ray auto|local|ADDRESS``; the ``invsr-cli[ray]`` extra).

Ray Data's batch-inference idiom, nothing home-made:

* the driver makes a dataset of small task records with :func:`ray.data.from_items` (input path, output path,
  output format, relative path, run index, a video segment's timestamps; never pixels: images never go through the object store);
* :meth:`~ray.data.Dataset.map_batches` runs :class:`RayWorker`, a callable class, on an actor pool
  (``compute=ActorPoolStrategy(...)``; Ray 2.60 deprecates ``concurrency=`` in favour of it), with an explicit
  ``batch_size`` (images per call), ``num_gpus=1`` per worker on a cluster with GPUs, ``num_cpus`` per worker
  otherwise. Each worker loads the engine once in ``__init__`` on the device Ray assigned, and in ``__call__``
  runs :func:`invsr_cli.work.process.process_images` over its batch: it reads the files from the shared file system,
  tiles, batches tiles across images, writes the outputs atomically there (temp + rename), and returns one small
  status row per input;
* the driver iterates the rows (:meth:`~ray.data.Dataset.iter_batches`, each block as it completes) and turns them back into
  :class:`~invsr_cli.work.report.Outcome` objects for :func:`invsr_cli.run.runner.run_batch`, which records them (lock,
  manifest and report stay in the driver).

Errors: one file's error is caught in the worker and comes back as a failed row (a bad file never fails a block).
Worker and node loss are Ray's to retry (actor restarts, task retries); a retried image rewrites the same bytes
atomically, never a partial file, and the driver passes on the first row per output only (a retried block's
repeated rows are counted in :attr:`RayExecutor.duplicates`), so every input ends in exactly one record.
Temporary files a killed worker left behind are removed at the end of the run.

Memory: rows are a few hundred bytes, so a local cluster gets a small object store (:data:`LOCAL_OBJECT_STORE`);
the memory that matters is each worker's engine and image buffers, on its own node (see docs/SCALING.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from invsr_cli.base.atomic import remove_temps_of
from invsr_cli.base.errors import ConfigError, InvSRError
from invsr_cli.settings.settings import SettingsPolicy
from invsr_cli.work.process import ImageTask
from invsr_cli.work.report import Outcome, Reporter, not_attempted

__all__ = ["RayExecutor", "RayWorker", "RayRunError", "require_ray", "INSTALL_HINT", "LOCAL_OBJECT_STORE",
           "BATCH_IMAGES", "outcome_from_row"]

INSTALL_HINT = "pip install 'invsr-cli[ray]'"
# Object store of a `--ray local` cluster. It holds the task records and status rows (a few hundred bytes each),
# never pixels, so a few MB would do; Ray's floor is about 75 MiB, and 256 MiB leaves room for Ray Data's own
# bookkeeping without taking a GPU box's (or a shared laptop's) RAM from the engine and its image buffers.
LOCAL_OBJECT_STORE = 256 * 2**20
# Images per `map_batches` call. Within a call, tiles of consecutive images share engine batches; across calls
# they do not. Larger means fuller GPU batches for small images; smaller means less recomputed when a worker is
# lost (a retried block redoes at most this many images) and finer load balancing across workers.
BATCH_IMAGES = 4


class RayRunError(InvSRError):
    """The Ray run itself failed (the cluster cannot be reached, every worker died, an engine cannot load)."""


def require_ray() -> Any:
    """Import and return ``ray`` (with Ray Data), or raise :class:`ConfigError` (exit 2) naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"--ray needs Ray Data, which is not installed ({e}); install the extra: "
                          f"{INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class _Assignment:
    """What a worker was given and chose: reported in every status row."""

    node: str
    pid: int
    gpu_ids: tuple[str, ...]  # Ray's GPU assignment (CUDA_VISIBLE_DEVICES is set to these)
    cpus: float  # Ray's CPU assignment: the worker's torch threads
    device: str  # where its engine computes


class RayWorker:
    """One actor of the pool: loads the engine once, then upscales batches of task records (a dict of arrays
    with ``input``, ``output``, ``rel``, ``format``, ``spec``, ``index``) and returns a status row per input.

    The device: the GPU Ray assigned (``cuda``: Ray sets ``CUDA_VISIBLE_DEVICES`` to it, so it is this process's
    ``cuda:0``), if CUDA is available here; a worker given GPU ids on a machine without CUDA (fake GPUs,
    ``ray.init(num_gpus=N)``) computes on the CPU and says so in its rows. A worker given no GPU computes on the
    CPU (or on MPS when asked), never on a GPU Ray did not give it.
    """

    def __init__(self, policy: SettingsPolicy, loader: Any = None) -> None:
        import ray
        import torch

        from invsr_cli.run.executors import load_engine

        resources = ray.get_runtime_context().get_assigned_resources()
        cpus = float(resources.get("CPU", 1.0) or 1.0)
        torch.set_num_threads(max(1, int(cpus)))
        gpu_ids = tuple(str(g) for g in ray.get_gpu_ids())
        want = policy.run.device
        if gpu_ids and want != "cpu":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            device = "mps" if want == "mps" else "cpu"
        self.policy = policy
        self.engine = (loader or load_engine)(replace(policy.run, device=device))
        self.assignment = _Assignment(ray.get_runtime_context().get_node_id(), os.getpid(), gpu_ids, cpus,
                                      str(self.engine.device))
        self._worker = json.dumps({**self.assignment.__dict__, "gpu_ids": list(gpu_ids)})

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from invsr_cli.work.inputs import InputInfo
        from invsr_cli.work.job import Job
        from invsr_cli.work.segment import SegmentSpec

        tasks = [
            ImageTask(Job(Path(str(i)), Path(str(o)), PurePosixPath(str(r)), str(f), str(s)), int(x),
                      info=InputInfo(**json.loads(str(h))) if str(h) else None,
                      segment=SegmentSpec.from_dict(json.loads(str(g))) if str(g) else None)
            for i, o, r, f, s, x, h, g in zip(batch["input"], batch["output"], batch["rel"], batch["format"],
                                              batch["spec"], batch["index"], batch["info"], batch["segment"],
                                              strict=True)
        ]
        start = time.perf_counter()
        reporter = _Collect()
        got, stopped = self._process(tasks, reporter)
        seconds = time.perf_counter() - start
        rows: dict[str, list[Any]] = {k: [] for k in ("input", "output", "status", "record", "worker", "warnings",
                                                       "stopped", "call_seconds")}
        for n, task in enumerate(tasks):
            o = got.get(str(task.job.output)) or not_attempted(task, stopped)  # after a full disk
            rec = o.to_record()  # with the weights this worker's engine really loaded, for the manifest
            rows["input"].append(o.input)
            rows["output"].append(o.output)
            rows["status"].append(o.status)
            rows["record"].append(json.dumps(rec, default=str))
            rows["worker"].append(self._worker)
            rows["warnings"].append(json.dumps(reporter.warnings if n == 0 else []))
            rows["stopped"].append(stopped or "")
            rows["call_seconds"].append(seconds if n == 0 else -1.0)  # the call's time, on its first row
        return rows

    def _process(self, tasks: list[ImageTask], reporter: Reporter) -> tuple[dict[str, Outcome], str | None]:
        """Every task's outcome, by output. An unexpected error on one image is that image's failed outcome
        (process_images makes it, as for every executor); a full disk leaves the rest without one."""
        from invsr_cli.work.process import process_images

        processing = process_images(tasks, self.policy, self.engine, reporter=reporter)
        got = {o.output: o for o in processing}
        return got, processing.stopped


class _Collect(Reporter):
    """A worker's reporter: keeps the warnings (out of memory, retried tiles) for its status rows."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, text: str) -> None:
        self.warnings.append(text)


def outcome_from_row(row: dict[str, Any]) -> Outcome:
    """The :class:`Outcome` a status row carries (with the :class:`Settings` and the models it was made with):
    its record is :meth:`Outcome.to_record`, as in the manifest."""
    return Outcome.from_record(json.loads(row["record"]))


class RayExecutor:
    """Run the images on a Ray cluster with Ray Data (see the module docstring).

    ``address``: ``local`` starts a cluster in this process for the run and shuts it down after; ``auto``
    connects to the cluster ``RAY_ADDRESS`` names (or one running on this machine); anything else is a cluster
    address (``HOST:PORT`` or ``ray://HOST:10001``). When Ray is already initialised in this process (a program
    or a test that started it), that cluster is used and left running, whatever ``address`` says.

    ``workers``: the most workers (default: one per GPU on a cluster with GPUs, else one per
    ``cpus_per_worker`` CPUs); ``batch_size``: images per worker call; ``memory_per_worker``: bytes of host
    memory Ray reserves per worker when placing it (default none: Ray does not account for it); ``loader``: the
    engine loader the workers call (default :func:`invsr_cli.run.executors.load_engine`; must be importable on the
    workers).

    After a run: ``calls`` lists ``(arrival, seconds, images)`` per worker call: when its first row reached the
    driver (``time.perf_counter``), how long the call took in the worker, and its images (scripts/ray_overhead.py
    derives Ray's per-image overhead from it); ``workers_seen`` maps each worker's assignment (node, pid, GPU ids, CPUs, device) to the number
    of images it finished; ``duplicates`` counts repeated rows a retried block sent (and were dropped);
    ``startup_seconds`` is the time from the call to the cluster being ready; ``first_row_seconds`` to the first
    status row.
    """

    def __init__(self, address: str = "local", *, workers: int | None = None, batch_size: int = BATCH_IMAGES,
                 cpus_per_worker: float = 1.0, memory_per_worker: int | None = None,
                 object_store_memory: int = LOCAL_OBJECT_STORE, loader: Any = None) -> None:
        if not address:
            raise ConfigError("--ray must be auto, local or a cluster address (HOST:PORT or ray://HOST:PORT)")
        if batch_size < 1 or (workers is not None and workers < 1) or cpus_per_worker <= 0:
            raise ConfigError("Ray workers, batch size and CPUs per worker must be positive")
        require_ray()
        self.address = address
        self.workers = workers
        self.batch_size = batch_size
        self.cpus_per_worker = cpus_per_worker
        self.memory_per_worker = memory_per_worker
        self.object_store_memory = object_store_memory
        self.loader = loader
        self.stopped: str | None = None
        self.duplicates = 0
        self.workers_seen: dict[str, int] = {}
        self.calls: list[tuple[float, float, int]] = []
        self.startup_seconds: float | None = None
        self.first_row_seconds: float | None = None

    # connecting -------------------------------------------------------------------------------------------------
    def _connect(self, ray: Any, reporter: Reporter) -> None:
        """Initialise Ray as ``address`` says, unless this process has already. ``ray.init`` installs its own
        SIGINT/SIGTERM handlers in a driver (SIGTERM: exit 15 at once); the run's handlers (stop after the
        rows in flight, exit 143) are put back."""
        if ray.is_initialized():
            return
        import signal
        import threading

        main = threading.current_thread() is threading.main_thread()
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            self._init(ray, reporter)
        finally:
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)

    def _init(self, ray: Any, reporter: Reporter) -> None:
        common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        if self.address == "local":
            reporter.info(f"ray: starting a local cluster ({os.cpu_count()} CPUs, object store "
                          f"{self.object_store_memory // 2**20} MiB)")
            # address="local": always a new cluster of this run's own, even when another runs on this machine (a
            # second `--ray local` run, say); without it ray.init joins that one and refuses num_cpus
            ray.init(address="local", num_cpus=os.cpu_count(), object_store_memory=self.object_store_memory,
                     **common)
        else:
            address = "auto" if self.address == "auto" else self.address
            if address != "auto":
                _probe(address)  # Ray itself waits minutes on an address where nothing listens
            if address == "auto" and not os.environ.get("RAY_ADDRESS"):
                reporter.info("ray: RAY_ADDRESS is not set; looking for a cluster running on this machine")
            try:
                ray.init(address=address, **{k: v for k, v in common.items() if k != "include_dashboard"})
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise RayRunError(f"--ray {self.address}: cannot connect to the Ray cluster: {e}") from None

    @staticmethod
    def _quiet_ray_data() -> Any:
        from ray.data import DataContext

        # Ray Data's per-run chatter, and its own stack trace of an error this executor raises (and the CLI reports)
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # the run's reporter shows progress; Ray's bars would interleave
        ctx.print_on_execution_start = False
        return ctx

    # the run ----------------------------------------------------------------------------------------------------
    def run(self, tasks: Sequence[ImageTask], policy: SettingsPolicy, ctx: Any) -> Iterator[Outcome]:
        if not tasks or ctx.should_stop():
            return
        ray = require_ray()
        start = time.perf_counter()
        ours = not ray.is_initialized()  # this run starts or joins the cluster: it shuts its connection down
        try:
            with ctx.loading():  # a stop signal while the cluster starts abandons the start
                self._connect(ray, ctx.reporter)
            self.startup_seconds = round(time.perf_counter() - start, 3)
            ctx.reporter.info(f"ray: cluster ready in {self.startup_seconds:.1f} s: {ray.cluster_resources()}")
            yield from self._run(ray, tasks, policy, ctx, start)
        finally:
            if ours and ray.is_initialized():
                ray.shutdown()  # `local`: stops the cluster; `auto`/ADDRESS: disconnects
            remove_temps_of(t.job.output for t in tasks)

    def plan(self, ray: Any, policy: SettingsPolicy, n_tasks: int) -> dict[str, Any]:
        """The ``map_batches`` resources and pool size for this cluster (public so tests and docs can see it)."""
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        use_gpus = gpus > 0 and policy.run.device not in ("cpu", "mps")
        most = self.workers or (gpus if use_gpus else max(1, int(res.get("CPU", 1) // self.cpus_per_worker)))
        blocks = -(-n_tasks // self.batch_size)
        size = max(1, min(most, blocks))
        kw: dict[str, Any] = {"num_cpus": self.cpus_per_worker}
        if use_gpus:
            kw["num_gpus"] = 1
        if self.memory_per_worker:
            kw["memory"] = self.memory_per_worker
        return {"size": size, "blocks": blocks, "resources": kw}

    def _run(self, ray: Any, tasks: Sequence[ImageTask], policy: SettingsPolicy, ctx: Any,
             start: float) -> Iterator[Outcome]:
        from ray.data import ActorPoolStrategy

        self._quiet_ray_data()
        reporter = ctx.reporter
        records = [{"input": str(t.job.input), "output": str(t.job.output), "rel": str(t.job.rel),
                    "format": t.job.format, "spec": t.job.spec, "index": t.index,
                    "info": json.dumps(asdict(t.info)) if t.info is not None else "",
                    # a video segment: its frames' timestamps and encoder (a few kB), never pixels
                    "segment": json.dumps(t.segment.to_dict()) if t.segment is not None else ""} for t in tasks]
        plan = self.plan(ray, policy, len(tasks))
        reporter.info(f"ray: {len(tasks)} images in {plan['blocks']} blocks of {self.batch_size}, up to "
                      f"{plan['size']} workers with {plan['resources']}")
        ds = ray.data.from_items(records, override_num_blocks=plan["blocks"])
        ds = ds.map_batches(
            RayWorker, fn_constructor_kwargs={"policy": policy, "loader": self.loader}, batch_size=self.batch_size,
            batch_format="numpy", compute=ActorPoolStrategy(min_size=1, max_size=plan["size"],
                                                            initial_size=plan["size"]),
            **plan["resources"],
        )
        yield from self.consume(_rows(ds), tasks, ctx, start)

    def consume(self, rows: Any, tasks: Sequence[ImageTask], ctx: Any, start: float) -> Iterator[Outcome]:
        """The driver's side: status rows (from ``iter_rows``, in arrival order) -> outcomes, the first row per
        output only; stops after a row that says the disk is full (then every image without a row is "not
        attempted") or when ``ctx.should_stop()``."""
        reporter = ctx.reporter
        seen: set[str] = set()
        try:
            for row in _unwrap_errors(rows):
                now = time.perf_counter()
                if self.first_row_seconds is None:
                    self.first_row_seconds = round(now - start, 3)
                if row["call_seconds"] >= 0:
                    self.calls.append((now, float(row["call_seconds"]), 0))
                if self.calls:
                    t, sec, n = self.calls[-1]
                    self.calls[-1] = (t, sec, n + 1)
                if row["output"] in seen:  # a retried block's repeat: the image is recorded already
                    self.duplicates += 1
                    continue
                seen.add(row["output"])
                for text in json.loads(row["warnings"]):
                    reporter.warning(text)
                o = outcome_from_row(row)
                self._count(row["worker"], o, reporter)
                yield o
                if row["stopped"]:
                    self.stopped = str(row["stopped"])
                    break
                if ctx.should_stop():
                    break
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()
        if self.stopped is not None:  # a full disk: as a local run, every image not finished is not attempted
            for t in tasks:
                if str(t.job.output) not in seen:
                    yield not_attempted(t, self.stopped)

    def _count(self, worker: str, o: Outcome, reporter: Reporter) -> None:
        if worker not in self.workers_seen:
            self.workers_seen[worker] = 0
            reporter.info(f"ray worker: {worker}")
        if o.status == "done":
            self.workers_seen[worker] += 1
            reporter.tiles_planned(o.tiles)
            reporter.tiles_done(o.tiles)


def _probe(address: str, timeout: float = 10.0) -> None:
    """Fail fast, naming the address, when nothing accepts a TCP connection at ``[ray://]HOST:PORT``."""
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--ray must be auto, local or a cluster address HOST:PORT or ray://HOST:PORT, "
                          f"got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise RayRunError(f"--ray {address}: cannot reach a Ray cluster there: {e}") from None


def _rows(ds: Any) -> Iterator[dict[str, Any]]:
    """The dataset's status rows as each block arrives. Not ``iter_rows()``: its one-block prefetch (Ray 2.60)
    hands a block over only when the next one is done, so progress, records and stop signals would lag a whole
    worker call behind; ``prefetch_batches=0`` yields each block as it completes (rows are tiny: nothing to
    overlap)."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns), strict=True):
            row = dict(zip(columns, values, strict=True))
            row["output"] = str(row["output"])
            yield row


def _unwrap_errors(rows: Any) -> Iterator[dict[str, Any]]:
    """Ray's errors out of the iteration: an error of ours raised in a worker (an engine that cannot load:
    weights unavailable, exit 3) comes out as itself; anything else as :class:`RayRunError`."""
    try:
        yield from rows
    except InvSRError:
        raise
    except Exception as e:
        ours = _our_cause(e)
        if ours is not None:
            raise ours from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RayRunError(f"the Ray run failed: {type(e).__name__}: {first}") from e


def _our_cause(e: BaseException) -> InvSRError | None:
    """The :class:`InvSRError` a Ray error wraps, if any: Ray keeps a worker's exception as ``RayTaskError.cause``
    (an actor that died in ``__init__`` holds that ``RayTaskError`` in its arguments)."""
    todo, seen = [e], set()
    while todo:
        c = todo.pop()
        if id(c) in seen:
            continue
        seen.add(id(c))
        if isinstance(c, InvSRError):
            return c
        todo += [x for x in (getattr(c, "cause", None), c.__cause__, c.__context__, *c.args)
                 if isinstance(x, BaseException)]
    return None
