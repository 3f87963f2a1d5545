"""Executors: where the unit of work runs. Each takes whole images (:class:`~invsr_cli.work.process.ImageTask`) with a
settings policy, has them upscaled and written atomically where it runs, and hands back one
:class:`~invsr_cli.work.report.Outcome` per image. The run's driver (:func:`invsr_cli.run.runner.run_batch`) owns the lock,
the manifest and the report, and records what comes back; an executor records nothing.

* :class:`LocalExecutor`: this process, one engine (the default).
* :class:`invsr_cli.run.executors.devices.DevicesExecutor`: a worker process per device (``--devices``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from invsr_cli.settings.settings import Settings, SettingsPolicy
from invsr_cli.work.process import ImageTask
from invsr_cli.work.report import Outcome, Reporter

__all__ = ["Executor", "LocalExecutor", "RunContext", "load_engine", "engine_line", "models_line", "verbose_timer"]


@dataclass
class RunContext:
    """What the driver gives an executor: where progress and warnings go, when to stop taking new work (a
    signal), and a context to wrap model loading in (a stop signal then abandons the load)."""

    reporter: Reporter = field(default_factory=Reporter)
    should_stop: Callable[[], bool] = lambda: False
    loading: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
    finish_in_flight: bool = False  # on a stop, finish the images already read (a service) instead of abandoning


class Executor(Protocol):
    """Runs image tasks and yields their outcomes. ``stopped`` says why it ended early (a full disk), or None."""

    stopped: str | None

    def run(self, tasks: Sequence[ImageTask], policy: SettingsPolicy, ctx: RunContext) -> Iterator[Outcome]: ...


def load_engine(settings: Settings) -> Any:
    """Load the engine ``settings`` ask for (weights from the HF cache or local paths)."""
    from invsr_cli.engine.start import load_engine as load

    return load(settings.sd_model, settings.noise_predictor, device=settings.device, dtype=settings.dtype,
                vae_fp32=settings.vae_fp32, compile=settings.compile)


class LocalExecutor:
    """This process, one engine: the ``engine`` given, or one loaded by ``loader`` when the first task comes."""

    def __init__(self, engine: Any = None, loader: Callable[[Settings], Any] = load_engine) -> None:
        self.engine = engine
        self.loader = loader
        self.stopped: str | None = None
        self._announced = False

    def load(self, policy: SettingsPolicy, ctx: RunContext) -> None:
        """Load the engine now if there is none yet (``run`` calls it at its first task; ``invsr watch`` at start)."""
        if self.engine is None:
            s = policy.settings
            with ctx.loading():  # a stop signal from the announcement on abandons the load
                ctx.reporter.info(f"loading the models: {models_line(s)}")
                ctx.reporter.stage("loading the models")
                try:
                    self.engine = self.loader(s)
                finally:
                    ctx.reporter.stage("reading images")

    def run(self, tasks: Sequence[ImageTask], policy: SettingsPolicy, ctx: RunContext) -> Iterator[Outcome]:
        from invsr_cli.work.process import process_images

        if not tasks or ctx.should_stop():
            return
        reporter = ctx.reporter
        self.load(policy, ctx)
        # -v: stage seconds; the engine line once per engine, however many runs it serves (`invsr watch`)
        timer = verbose_timer(self.engine, policy, reporter, announce=not self._announced)
        self._announced = self._announced or timer is not None
        processing = process_images(tasks, policy, self.engine, reporter=reporter, should_stop=ctx.should_stop,
                                    timer=timer, finish_in_flight=ctx.finish_in_flight)
        try:
            yield from processing
        finally:
            if timer is not None:
                timer.detach()
        self.stopped = processing.stopped


def models_line(settings: Settings) -> str:
    """The weights a run loads, for its announcement (every executor's)."""
    return f"{settings.sd_model}, noise predictor {settings.noise_predictor or 'default'}"


def verbose_timer(engine: Any, policy: SettingsPolicy, reporter: Reporter, *, announce: bool = True) -> Any:
    """The -v set-up every executor's worker loop makes: with a verbose reporter, a
    :class:`~invsr_cli.engine.timing.StageTimer` attached to ``engine`` (per-image stage seconds) and, when
    ``announce``, the engine line (:func:`engine_line`) said; None without -v."""
    if not getattr(reporter, "verbose", False):
        return None
    from invsr_cli.engine.timing import StageTimer

    timer = StageTimer(engine.device)
    timer.attach(engine)
    if announce:
        reporter.info(engine_line(engine, policy))
    return timer


def engine_line(engine: Any, policy: SettingsPolicy) -> str:
    """-v, once per engine: where and how it computes, and with which weights."""
    import json

    load = getattr(engine, "load_seconds", None)
    models = getattr(engine, "identity", None) or {"sd_model": policy.settings.sd_model,
                                                   "noise_predictor": policy.settings.noise_predictor}
    from invsr_cli.engine.devices import dtype_name

    return (f"engine: device {engine.device}, dtype {dtype_name(getattr(engine, 'dtype', policy.settings.dtype))}, "
            f"load {f'{load:.1f} s' if load is not None else 'n/a (given loaded)'}; "
            f"models {json.dumps(models, sort_keys=True, default=str)}")
