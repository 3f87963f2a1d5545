"""A run: the process that owns the output folder's lock, the manifest and the report.

``run_batch`` takes the jobs (from ``invsr_cli.run.discover``) and a settings policy and:

1. takes the output folder's lock, cleans temporary files an interrupted run left, opens the run manifest;
2. decides per job: skip (an up-to-date output exists) or compute;
3. hands the rest to an executor (:mod:`invsr_cli.run.executors`: this process by default), which loads the models
   only if something is to be computed and runs :func:`invsr_cli.work.process.process_images`, the unit of work: one
   image with its resolved settings;
4. records each outcome (reporter, manifest, summary) and returns the :class:`~invsr_cli.work.report.Summary`.

One bad input never stops the batch. A full disk does (every later write would fail too). SIGINT/SIGTERM stop
after the writes in flight, also while the models load.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from invsr_cli.base.errors import ConfigError, InvSRError
from invsr_cli.run.executors import Executor, RunContext
from invsr_cli.run.manifest import Manifest, folder_manifests, input_stamp, manifest_name
from invsr_cli.run.shard import Shard
from invsr_cli.settings.settings import FixedPolicy, RunSettings, Settings, SettingsPolicy
from invsr_cli.work.job import Job
from invsr_cli.work.report import Outcome, Reporter, Summary

__all__ = ["run_batch", "Run", "Recorder"]


def run_fingerprint(policy: SettingsPolicy, identity: dict[str, Any] | None) -> str:
    """What an output depends on: the settings (with ``auto``, every schedule the rules can pick and the rules
    themselves) and the weights' ``identity`` (:func:`invsr_cli.engine.model_identity`)."""
    import hashlib
    import json

    models = ""
    if identity is not None:
        models = "-" + hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return policy.fingerprint() + models


class Recorder:
    """Counts outcomes into the summary, tells the reporter, and appends done/failed ones to the manifest with
    the settings and the weights each was made with. ``models`` is the identity expected before anything loads
    (what skip-existing compares with); an outcome made by an engine says which weights it really used."""

    def __init__(self, reporter: Reporter, manifest: Manifest | None, policy: SettingsPolicy,
                 models: dict[str, Any] | None = None) -> None:
        self.reporter = reporter
        self.manifest = manifest
        self.policy = policy
        self.models = models
        self.fingerprint = run_fingerprint(policy, models)
        self.summary = Summary()
        self.stop_signal: str | None = None

    @property
    def stopping(self) -> bool:
        return self.stop_signal is not None

    def fingerprint_for(self, job: Job, fingerprint: str | None = None) -> str:
        """What ``job``'s output depends on: the run's fingerprint (or ``fingerprint``), and for a video the video
        keys too (:func:`invsr_cli.run.videos.job_fingerprint`)."""
        from invsr_cli.run.videos import job_fingerprint

        return job_fingerprint(job, self.fingerprint if fingerprint is None else fingerprint, self.policy.run)

    def record(self, o: Outcome, job: Job | None = None) -> None:
        s = self.summary
        s.outcomes.append(o)
        if o.status == "done":
            s.processed += 1
            s.output_pixels += o.width * o.height
            s.tiles += o.tiles
        elif o.status == "skipped":
            s.skipped += 1
        elif o.status == "failed":
            s.failed += 1
        elif o.status == "planned":
            s.planned += 1
            s.tiles += o.tiles
        self.reporter.outcome(o)
        if self.manifest is not None and o.status in ("done", "failed"):
            self._append(o, job)

    def record_segment(self, o: Outcome, job: Job, count: int, progress: dict[str, Any]) -> None:
        """A video segment's outcome: the reporter's progress line and a manifest line (keyed by the segment's
        file, with the video's output); the summary counts the video, once, when it is recorded."""
        self.reporter.segment(o, str(job.output), count, progress)
        if self.manifest is not None:
            self._append(o, job, video=str(job.output), segments=count)

    def _append(self, o: Outcome, job: Job | None, **extra: Any) -> None:
        # What was loaded: e.g. the commit a first run has just fetched (its revision was unknown before the fetch).
        models = o.models if o.models is not None else self.models
        fingerprint = run_fingerprint(self.policy, models)
        rec: dict[str, Any] = {**replace(o, models=models).to_record(),
                               "fingerprint": self.fingerprint_for(job, fingerprint) if job is not None else fingerprint,
                               **extra}
        if job is not None:
            with contextlib.suppress(OSError):
                rec.update(input_stamp(job.input))
        try:
            self.manifest.append(rec)
        except OSError as e:  # the manifest is bookkeeping: losing a line must not lose the output
            self.reporter.warning(f"cannot append to the manifest {self.manifest.path}: {e}")


def run_batch(
    jobs: Sequence[Job],
    settings: Settings | SettingsPolicy,
    *,
    output_dir: Path,
    reporter: Reporter | None = None,
    dry_run: bool = False,
    manifest_path: Path | None = None,
    wait: bool = False,
    engine: Any = None,
    engine_loader: Callable[[RunSettings], Any] | None = None,
    executor: Executor | None = None,
    handle_signals: bool = True,
    input_errors: Sequence[tuple[str, str]] = (),
    shard: Shard | None = None,
) -> Summary:
    """Upscale ``jobs`` into ``output_dir`` with ``settings`` (one ``Settings`` for every image, or a policy that
    chooses per image) and return the summary (see the module docstring).

    ``input_errors`` are ``(input, reason)`` pairs that discovery could not turn into jobs (no such file, matches
    nothing): they are reported and counted as failed like any other input, so the summary tells the whole run.

    ``shard`` (:mod:`invsr_cli.run.shard`): keep only the jobs (and input errors) of that shard; the run then holds
    the folder's lock shared and its shard's own lock, cleans only its own outputs' temporary files, and appends to
    its own manifest. ``--skip-existing`` always reads every manifest in the folder.

    ``executor`` runs the images (:mod:`invsr_cli.run.executors`); by default this process does, with ``engine`` if
    given (tests, benchmarks, programs that keep one loaded), otherwise with one ``engine_loader`` loads once,
    and only if some job needs computing. Raises ``LockedError`` when another run holds the folder,
    ``WeightsUnavailableError``/``ModelLoadError`` when the models cannot be loaded.
    """
    policy = FixedPolicy(settings) if isinstance(settings, Settings) else settings
    if shard is not None:  # a video is every shard's: its segments are spread over them (run.videos)
        from invsr_cli.run.videos import is_video_job

        jobs = [job for job in jobs if is_video_job(job) or shard.holds(job.rel)]
        input_errors = [(spec, why) for spec, why in input_errors if shard.holds(spec)]
    reporter = reporter or Reporter()
    infos = _probe(jobs, policy)
    _refuse_unreachable_sizes(jobs, infos, policy)
    from invsr_cli.run.videos import refuse_unknown_encoder

    refuse_unknown_encoder(jobs, policy.run)
    if dry_run or not jobs:  # nothing to write: no lock, no manifest, no folder
        start = time.perf_counter()
        rec = Recorder(reporter, None, policy, _expected_models(engine, policy) if jobs else None)
        _record_input_errors(input_errors, rec)
        if dry_run:  # what the run would skip, from the same manifests (read only)
            manifest = _read_manifest(output_dir, manifest_path, shard)
            kept = _skip_existing(jobs, infos, policy, rec, manifest)
            _plan_only([job for _, job, _ in kept], [info for _, _, info in kept], policy, rec,
                       output_dir=Path(output_dir), manifest=manifest)
        else:
            reporter.start(0, 0, 0)
        rec.summary.wall_seconds = time.perf_counter() - start
        reporter.finish(rec.summary)
        return rec.summary

    refuse_unwritable(output_dir, manifest_path, shard)
    if engine is None and engine_loader is None and executor is None:
        _require_weights(jobs, policy, _read_manifest(output_dir, manifest_path, shard))
    with Run(policy, output_dir=output_dir, reporter=reporter, manifest_path=manifest_path, wait=wait,
             engine=engine, engine_loader=engine_loader, executor=executor, handle_signals=handle_signals,
             shard=shard, shard_outputs=[job.output for job in jobs] if shard is not None else None) as run:
        run.process(jobs, input_errors=input_errors, infos=infos)
    return run.summary


def _probe(jobs: Sequence[Job], policy: SettingsPolicy) -> list[Any]:
    """Each image's header, read once (:func:`invsr_cli.work.inputs.probe_inputs`): every later step uses it.
    A video's is None here: :mod:`invsr_cli.run.videos` probes it with PyAV when it plans its segments."""
    from invsr_cli.run.videos import is_video_job
    from invsr_cli.work.inputs import probe_inputs

    images = iter(probe_inputs((job.input for job in jobs if not is_video_job(job)),
                               first_frame=policy.run.first_frame))
    return [None if is_video_job(job) else next(images) for job in jobs]


class Run:
    """A run that is fed more than once (``invsr watch``; :func:`run_batch` feeds it once), with one executor,
    so the models load once.

    Entering takes the output folder's lock (``LockedError`` when held, unless ``wait``), removes the temporary
    files an interrupted run left, opens the manifest and installs the SIGINT/SIGTERM handlers (``handle_signals``,
    main thread only). :meth:`process` skips or computes jobs, as often as needed. Leaving restores the handlers,
    reports the summary (:attr:`summary`) and releases the lock.
    """

    def __init__(self, settings: Settings | SettingsPolicy, *, output_dir: Path, reporter: Reporter | None = None,
                 manifest_path: Path | None = None, wait: bool = False, engine: Any = None,
                 engine_loader: Callable[[RunSettings], Any] | None = None, executor: Executor | None = None,
                 handle_signals: bool = True, finish_in_flight: bool = False, shard: Shard | None = None,
                 shard_outputs: Sequence[Path] | None = None) -> None:
        from invsr_cli.run.executors import LocalExecutor, load_engine

        self.policy = FixedPolicy(settings) if isinstance(settings, Settings) else settings
        self.output_dir = Path(output_dir)
        self.reporter = reporter or Reporter()
        self.manifest_path = manifest_path
        self.wait = wait
        self.engine = engine
        self.executor = executor or LocalExecutor(engine, engine_loader or load_engine)
        self.handle_signals = handle_signals
        self.finish_in_flight = finish_in_flight
        self.shard = shard  # shards share the folder: see run_batch
        self.shard_outputs = list(shard_outputs or [])
        self.rec: Recorder | None = None
        self._stack = contextlib.ExitStack()
        self._started = False

    def __enter__(self) -> Run:
        from invsr_cli.base.atomic import cleanup_stale_temps
        from invsr_cli.run.lock import output_lock

        self._start = time.perf_counter()
        refuse_unwritable(self.output_dir, self.manifest_path, self.shard)
        with contextlib.ExitStack() as stack:
            shard = self.shard
            if shard is None:
                stack.enter_context(output_lock(self.output_dir, wait=self.wait))
                removed = cleanup_stale_temps(self.output_dir)
            else:  # exclude plain runs and this shard's twin, not the other shards; clean only our own temps
                from invsr_cli.base.atomic import remove_temps_of

                stack.enter_context(output_lock(self.output_dir, wait=self.wait, shared=True))
                stack.enter_context(output_lock(self.output_dir, wait=self.wait, name=f".invsr.{shard.tag}.lock"))
                removed = remove_temps_of(self.shard_outputs)
            if removed:
                self.reporter.warning(f"removed {removed} temporary file(s) left by an interrupted run in "
                                      f"{self.output_dir}")
            manifest = _read_manifest(self.output_dir, self.manifest_path, shard)
            self.rec = Recorder(self.reporter, manifest, self.policy, _expected_models(self.engine, self.policy))
            self._signals = stack.enter_context(_stop_on_signals(self.rec, enabled=self.handle_signals,
                                                                 finish_in_flight=self.finish_in_flight))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._stack:  # restores the signal handlers, then releases the lock
            rec = self.rec
            rec.summary.interrupted = rec.stop_signal
            rec.summary.wall_seconds = time.perf_counter() - self._start
            self.reporter.finish(rec.summary)

    @property
    def summary(self) -> Summary:
        return self.rec.summary

    @property
    def stopping(self) -> bool:
        """A stop signal arrived, or the run stopped early (disk full): process nothing more."""
        return self.rec.stopping or self.rec.summary.stopped is not None

    def _context(self) -> RunContext:
        return RunContext(self.reporter, lambda: self.rec.stopping, self._signals.loading, self.finish_in_flight)

    def load_models(self) -> None:
        """Load the models now instead of at the first image to compute (an executor without ``load`` loads its
        own way). A stop signal abandons the load."""
        load = getattr(self.executor, "load", None)
        if load is not None and not self.stopping:
            with contextlib.suppress(_StoppedWhileLoading):  # the summary says which signal
                load(self.policy, self._context())

    def process(self, jobs: Sequence[Job], *, input_errors: Sequence[tuple[str, str]] = (),
                infos: Sequence[Any] | None = None) -> None:
        """Record ``input_errors`` as failed, skip the jobs with an up-to-date output, compute the rest and record
        every outcome. Computes nothing once :attr:`stopping`. ``infos``: each job's header, probed once
        (:func:`invsr_cli.work.inputs.probe_inputs`; ``None``: probe them here)."""
        rec = self.rec
        _record_input_errors(input_errors, rec)
        todo = _skip_existing(jobs, _probe(jobs, self.policy) if infos is None else infos, self.policy, rec)
        if not self._started:
            self._started = True
            self.reporter.start(len(jobs), len(todo), 0)
        if self.stopping:
            return
        with contextlib.suppress(_StoppedWhileLoading):  # the summary says which signal
            _compute(todo, self.policy, self.executor, self._context(), rec, self.output_dir, self.shard)


def _compute(todo: list[tuple[int, Job, Any]], policy: SettingsPolicy, executor: Executor, ctx: RunContext,
             rec: Recorder, output_dir: Path, shard: Shard | None = None) -> None:
    """Hand the images and the videos' segments (:mod:`invsr_cli.run.videos`) to the executor in one stream,
    record what comes back; a video is recorded when its last segment is in."""
    from invsr_cli.run.videos import Videos, is_video_job
    from invsr_cli.work.process import ImageTask

    jobs = {(str(job.input), str(job.output)): job for _, job, _ in todo}
    videos = Videos(rec, output_dir, policy, shard)
    tasks: list[ImageTask] = []
    for _, job, info in todo:  # tasks are numbered in this order: older first, a video's segments in order
        for task in videos.plan(job) if is_video_job(job) else [ImageTask(job, 0, info=info)]:
            tasks.append(replace(task, index=len(tasks)))
    for outcome in executor.run(tasks, policy, ctx) if tasks else ():
        if videos.owns(outcome):
            videos.take(outcome)
        else:
            rec.record(outcome, jobs.get((outcome.input, outcome.output)))
    for plan in videos.unfinished():
        rec.reporter.warning(f"{plan.job.input}: {plan.done_count()} of {plan.count} segments done and kept in "
                             f"{plan.folder}; run again to finish it")
    rec.summary.stopped = rec.summary.stopped or executor.stopped


def _expected_models(engine: Any, policy: SettingsPolicy) -> dict[str, Any]:
    """The identity of the weights the run will use: the given engine's, or what the settings name (cheap: no
    model is loaded, the network is not touched, a local file's hash comes from the cache)."""
    if engine is not None and getattr(engine, "identity", None) is not None:
        return engine.identity
    from invsr_cli.engine import model_identity

    return model_identity(policy.run.sd_model, policy.run.noise_predictor)


def _manifest_file(output_dir: Path, manifest_path: Path | None, shard: Shard | None) -> Path:
    return Path(manifest_path or Path(output_dir) / manifest_name(shard.tag if shard else None))


def _read_manifest(output_dir: Path, manifest_path: Path | None, shard: Shard | None) -> Manifest:
    """The run's manifest with every other manifest in the folder (reading creates nothing)."""
    return Manifest(_manifest_file(output_dir, manifest_path, shard), also_read=folder_manifests(Path(output_dir)))


def refuse_unwritable(output_dir: Path, manifest_path: Path | None = None, shard: Shard | None = None) -> None:
    """Before anything is computed or created: ConfigError (exit 2) when the output folder or the manifest cannot
    be written (a read-only mount, an immutable folder, no permission). A run without its manifest would lose
    what ``--skip-existing`` needs, so that is an error too, not a warning."""
    from invsr_cli.base.writable import refuse_unwritable_file, refuse_unwritable_folder

    refuse_unwritable_folder(output_dir)
    refuse_unwritable_file(_manifest_file(output_dir, manifest_path, shard), "the run manifest",
                           "; without it --skip-existing cannot tell what is up to date (give a writable --manifest)")


def _require_weights(jobs: Sequence[Job], policy: SettingsPolicy, manifest: Manifest) -> None:
    """Before the output folder is touched: when some job needs computing, find the weights (fetching only what is
    missing, see :func:`invsr_cli.engine.weights.resolve`); WeightsUnavailableError names every missing file."""
    s = policy.run
    if s.skip_existing:
        from invsr_cli.run.videos import job_fingerprint

        fingerprint = run_fingerprint(policy, _expected_models(None, policy))
        if all(job.output.is_file() and manifest.is_up_to_date(
                job.input, job.output, job_fingerprint(job, fingerprint, s)) is not False for job in jobs):
            return  # everything would be skipped: no weights needed
    from invsr_cli.engine.weights import resolve

    resolve(s.sd_model, s.noise_predictor, fetch=True).require()


def _record_input_errors(errors: Sequence[tuple[str, str]], rec: Recorder) -> None:
    from invsr_cli.base.paths import display_path

    for spec, reason in errors:  # the outcome names the input: its reason need not repeat it
        reason = reason.removeprefix(f"{display_path(spec)}: ")
        rec.record(Outcome(spec, "", "failed", reason=reason))


def _plan_only(jobs: Sequence[Job], infos: Sequence[Any], policy: SettingsPolicy, rec: Recorder, *,
               output_dir: Path, manifest: Manifest | None = None) -> None:
    """--dry-run: read headers only, print files, their final sizes, passes and tiles, planned as processing plans
    them (:func:`invsr_cli.work.inputs.plan_image`); compute nothing, write nothing."""
    from invsr_cli.base.errors import reason_of
    from invsr_cli.run.videos import is_video_job, plan_outcome
    from invsr_cli.work.inputs import check_container, check_pixels, plan_image, probe_input, skip_reason

    run, image = policy.run, policy.unmeasured
    for job, info in zip(jobs, infos, strict=True):
        try:
            if is_video_job(job):
                rec.record(plan_outcome(job, run, image, output_dir, rec.fingerprint, manifest))
                continue
            if info is None:  # unreadable: probe again for its reason
                info = probe_input(job.input, first_frame=run.first_frame)
            if (why := skip_reason(info, run)) is not None:
                rec.record(Outcome(str(job.input), str(job.output), "skipped", reason=why))
                continue
            plan = plan_image(job.input, info.width, info.height, info.frames, image, run)
            check_pixels(job.input, plan.size.input, info.frames, run.max_pixels)
            check_container(job, info.frames)
        except InvSRError as e:
            rec.record(Outcome(str(job.input), str(job.output), "failed", reason=reason_of(e, job)))
            continue
        w, h = plan.size.output
        rec.record(Outcome(
            str(job.input), str(job.output), "planned", width=w, height=h, tiles=plan.n_tiles * info.frames,
            preset="auto" if policy.measures else image.preset, timesteps=() if policy.measures else image.timesteps,
            reason="output exists" if job.output.is_file() else "", tile=plan.tiles[0].tile,
            overlap=plan.tiles[0].overlap, passes=plan.size.passes, frames=info.frames,
        ))


def _refuse_unreachable_sizes(jobs: Sequence[Job], infos: Sequence[Any], policy: SettingsPolicy) -> None:
    """Before any work: a target above x4 without ``--passes 2`` (or above x16) is a usage error (exit 2) naming
    each image and its factor, read from the headers. Unreadable files are left to fail on their own."""
    from invsr_cli.geometry.sizing import target_size
    from invsr_cli.work.inputs import skip_reason

    options = {policy.unmeasured, *policy.choices.values()}
    if not any(c.width or c.height or c.fit or c.long_side or c.short_side for c in options):
        return  # `--scale` is at most 4: always reachable in one pass
    run = policy.run
    refused: list[str] = []
    beyond: list[str] = []  # above x16: no number of passes helps
    for job, info in zip(jobs, infos, strict=True):
        if info is None or skip_reason(info, run) is not None:
            continue
        for c in options:
            plan = target_size(info.width, info.height, c, max_input_side=run.max_input_side)
            if plan.passes > c.passes:
                (refused if plan.allowed else beyond).append(f"{job.input}: {plan.describe()}")
                break
    if beyond:
        raise ConfigError(f"{len(beyond)} image(s) need more than x16, which two passes give at most; ask for a "
                          f"smaller size (or reduce less with --max-input-side): {_shown(beyond)}")
    if refused:
        raise ConfigError(f"{len(refused)} image(s) need more than x4, which one pass gives; add --passes 2 (up to "
                          f"x16) or ask for a smaller size: {_shown(refused)}")


def _shown(items: list[str]) -> str:
    return "; ".join(items[:5]) + (f"; and {len(items) - 5} more" if len(items) > 5 else "")


def _skip_larger(jobs: list[tuple[int, Job, Any]], run: Any, rec: Recorder) -> list[tuple[int, Job, Any]]:
    """``--skip-if-larger N``: inputs whose long side (from the header) is already at least N are left untouched,
    reported as skipped with the reason. (An unreadable one fails, with its reason, when it is read.)"""
    from invsr_cli.work.inputs import skip_reason

    if run.skip_if_larger is None:
        return jobs
    todo = []
    for index, job, info in jobs:
        if info is not None and (why := skip_reason(info, run)) is not None:
            rec.record(Outcome(str(job.input), str(job.output), "skipped", reason=why))
            continue
        todo.append((index, job, info))
    return todo


def _skip_existing(jobs: Sequence[Job], infos: Sequence[Any], policy: SettingsPolicy, rec: Recorder,
                   manifest: Manifest | None = None) -> list[tuple[int, Job, Any]]:
    """The jobs to compute (with their index and header); the rest are recorded as skipped. ``manifest``: where to
    look up what is up to date (default the recorder's; a dry run reads it without recording into it)."""
    manifest = manifest or rec.manifest
    todo = []
    for index, job, info in _skip_larger(list(zip(range(len(jobs)), jobs, infos, strict=True)), policy.run, rec):
        if policy.run.skip_existing and job.output.is_file():
            state = manifest.is_up_to_date(job.input, job.output, rec.fingerprint_for(job)) if manifest else None
            if state is not False:
                why = "up to date" if state else "output exists"
                rec.record(Outcome(str(job.input), str(job.output), "skipped", reason=why))
                continue
            rec.reporter.warning(f"{job.output} is stale (other settings, models or a changed input): recomputing")
        todo.append((index, job, info))
    return todo


class _StoppedWhileLoading(BaseException):
    """A stop signal arrived while the models were loading: abandon the load (BaseException, so no library
    catches it as an error of its own)."""


class _Signals:
    def __init__(self, rec: Recorder, finish_in_flight: bool = False) -> None:
        self.rec = rec
        self.finish_in_flight = finish_in_flight
        self._loading = False

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        self._loading = True
        try:
            yield
        finally:
            self._loading = False

    def handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.rec.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.rec.stop_signal = name
        if self._loading:
            self.rec.reporter.warning(f"{name}: stopping while the models load")
            raise _StoppedWhileLoading(name)
        what = "the images in flight" if self.finish_in_flight else "the writes in flight"
        self.rec.reporter.warning(f"{name}: finishing {what}, then stopping (Ctrl-C again to abandon)")


@contextlib.contextmanager
def _stop_on_signals(rec: Recorder, *, enabled: bool, finish_in_flight: bool = False) -> Iterator[_Signals]:
    """SIGINT/SIGTERM: stop taking new batches, finish the writes in flight (with ``finish_in_flight``, the images
    in flight), then return with the summary; while the models load, abandon the load. A second SIGINT abandons at
    once (KeyboardInterrupt); no partial files either way (writes are atomic)."""
    signals = _Signals(rec, finish_in_flight)
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield signals
        return
    previous = {sig: signal.signal(sig, signals.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signals
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
