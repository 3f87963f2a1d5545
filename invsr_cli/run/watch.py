"""``invsr watch INPUT_DIR OUTPUT_DIR``: upscale what is in a folder, then each image that arrives or changes there,
once it has settled. A service: one process, the models loaded once, the output folder's lock held throughout.

1. Take the output folder's lock and open the manifest (:class:`invsr_cli.run.runner.Run`, as ``invsr upscale``
   does: a second watcher, or an ``upscale`` into the same folder, exits 75 or waits), load the models.
2. Start watching INPUT_DIR and its sub-folders (``watchdog``: inotify on Linux, FSEvents on macOS, kqueue on the
   BSDs; with ``poll`` a :class:`~watchdog.observers.polling.PollingObserver` that compares directory snapshots
   every ``poll`` seconds, for network file systems where no events arrive).
3. Process what is already there exactly as ``invsr upscale -r INPUT_DIR OUTPUT_DIR`` would (same discovery, same
   output names, skip-existing through the manifest). A file modified less than ``settle`` seconds ago is treated
   as arriving (step 4) instead.
4. Then, for each file an event names: it is *pending* until its size and mtime have not changed for ``settle``
   seconds (re-checked on a short timer; any event on it restarts the wait); then it is processed, named as
   ``upscale -r`` names it. A file processed once is not processed again until its size or mtime changes: a
   failed file is retried only after it changes, and a changed image is recomputed (the manifest sees its new
   mtime, so skip-existing calls the output stale).

Ignored (never inputs, as for ``upscale -r``, plus partial downloads): names outside
:data:`~invsr_cli.run.discover.IMAGE_EXTENSIONS`; hidden files and anything in hidden folders (a name starting with
``.``: this covers our own temporary files ``.NAME.XXXXXXXX.invsr-tmp``, rsync's ``.NAME.XXXXXX`` and most
tools' in-progress copies); partial-download names, :data:`PARTIAL_SUFFIXES` (``.part``, ``.partial``,
``.crdownload``, ``.download``, ``.opdownload``, ``.tmp``, ``.temp``, ``.swp``, ``.filepart``, ``.crswap``,
``.aria2``, ``.!ut``) and names ending in ``~``; and everything inside OUTPUT_DIR when it nests inside INPUT_DIR
(our own outputs, the manifest, the lock).

A stop signal (SIGINT, SIGTERM) finishes the images in flight (read and being computed) and their writes, reports
the summary and returns; images not yet read are left for the next start. A second SIGINT abandons at once. A full disk, or INPUT_DIR disappearing, ends the watch with ``Summary.stopped`` set.

Known limits: inotify does not follow symlinked sub-folders (the start-up scan does); a writer that pauses for
longer than ``settle`` mid-file gets its file read early: the read fails (a truncated image) and the file is
retried when the writer changes it again.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from invsr_cli.base.errors import ConfigError, InvSRError
from invsr_cli.run.discover import IMAGE_EXTENSIONS, FoundInput, Job, case_insensitive, discover, name_outputs
from invsr_cli.settings.settings import RunSettings, Settings, SettingsPolicy
from invsr_cli.work.report import Reporter, Summary

__all__ = ["PARTIAL_SUFFIXES", "DEFAULT_SETTLE", "Settler", "WatchError", "ignored_name", "watch_folder"]

DEFAULT_SETTLE = 2.0  # seconds a file's size and mtime must stay unchanged before it is read
PARTIAL_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".opdownload", ".tmp", ".temp", ".swp",
                    ".filepart", ".crswap", ".aria2", ".!ut")
MAX_TICK = 0.25  # seconds between checks of the pending files (and of a stop signal)

Stamp = tuple[int, int]  # (size, mtime_ns)


class WatchError(InvSRError):
    """The folder cannot be watched (inotify limits, a vanished folder): exit 1, with what to do."""


def ignored_name(name: str) -> bool:
    """A file name ``invsr watch`` never takes: hidden, a partial download, or not an image by its extension."""
    lower = name.lower()
    return (name.startswith(".") or name.endswith("~") or lower.endswith(PARTIAL_SUFFIXES)
            or os.path.splitext(lower)[1] not in IMAGE_EXTENSIONS)


def _stamp(path: str) -> Stamp | None:
    """(size, mtime_ns) of a regular file (through symlinks), or None: gone, a folder, unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


@dataclass
class Settler:
    """Files waiting to settle: one is due when its stamp (size, mtime) has not changed, and no event has named it,
    for ``settle`` seconds. Pure bookkeeping; the caller supplies the clock and the stamps."""

    settle: float
    pending: dict[str, tuple[Stamp, float]] = field(default_factory=dict)

    def touch(self, key: str, stamp: Stamp, now: float) -> None:
        """An event named ``key`` (or it was found young): (re)start its wait."""
        self.pending[key] = (stamp, now)

    def drop(self, key: str) -> None:
        self.pending.pop(key, None)

    def next_due(self) -> float | None:
        """When the first pending file can be due (the clock's time), or None when nothing is pending."""
        return min(since for _, since in self.pending.values()) + self.settle if self.pending else None

    def due(self, now: float, stamp_of: Callable[[str], Stamp | None]) -> list[tuple[str, Stamp]]:
        """Re-check every pending file; return (and forget) those that have settled, oldest first. A file that
        vanished is forgotten; one whose stamp moved waits again from ``now``."""
        ready = []
        for key, (old, since) in list(self.pending.items()):
            stamp = stamp_of(key)
            if stamp is None:
                del self.pending[key]
            elif stamp != old:
                self.pending[key] = (stamp, now)
            elif now - since >= self.settle:
                del self.pending[key]
                ready.append((since, key, stamp))
        return [(key, stamp) for _, key, stamp in sorted(ready)]


class _Events:
    """watchdog's handler: collects the paths events name (watchdog's thread) for the watch loop (main thread)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.wake = threading.Event()
        self.root_gone = False
        self._lock = threading.Lock()
        self._paths: dict[str, float] = {}  # path -> when its latest event came (time.monotonic)

    def dispatch(self, event: Any) -> None:
        """Called by watchdog for each event (the observer needs no more of a handler than this)."""
        if event.event_type in ("opened", "closed_no_write") or (
                event.is_directory and event.event_type not in ("created", "moved", "deleted")):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if event.is_directory and event.event_type == "deleted" and os.fsdecode(event.src_path) == self.root:
            self.root_gone = True
        now = time.monotonic()
        with self._lock:
            for p in paths:
                if p:
                    self._paths[os.fsdecode(p)] = now
        self.wake.set()

    def take(self) -> list[tuple[str, float]]:
        with self._lock:
            paths, self._paths = list(self._paths.items()), {}
        return paths


def _event_filter() -> list[type]:
    from watchdog import events as e

    names = ("FileCreatedEvent", "FileModifiedEvent", "FileAttribEvent", "FileClosedEvent", "FileMovedEvent",
             "FileDeletedEvent", "DirCreatedEvent", "DirMovedEvent", "DirDeletedEvent")
    return [getattr(e, n) for n in names if hasattr(e, n)]  # not opened/closed-unwritten: our own reads


class _Watch:
    """The state of one watch: what is pending, what was handled at which stamp, which outputs are claimed."""

    def __init__(self, input_dir: Path, output_dir: Path, run: Any, settle: float, policy: SettingsPolicy) -> None:
        self.spec = str(input_dir)  # jobs name their input as `upscale -r INPUT_DIR` does: INPUT_DIR/rel
        self.root = os.path.abspath(input_dir)
        self.out_real = os.path.realpath(output_dir)
        self.output_dir = output_dir
        self.run = run
        self.settle = settle
        s = policy.run  # output names exactly as `upscale -r` makes them
        self.naming = {"suffix": s.suffix, "fmt": s.format, "lossless": s.lossless}
        self.settler = Settler(settle)
        self.handled: dict[str, Stamp] = {}  # rel -> the stamp it was processed (or refused) at
        self.claimed: dict[str, str] = {}  # output key -> rel of the input that makes it
        self.fold_case = case_insensitive(output_dir)

    # paths ----------------------------------------------------------------------------------------------------
    def _rel(self, path: str) -> PurePosixPath | None:
        """``path``'s place under INPUT_DIR if it is a candidate input, else None (ignored)."""
        rel = os.path.relpath(path, self.root)
        if rel == "." or rel.startswith(".." + os.sep) or rel == "..":
            return None
        parts = PurePosixPath(rel.replace(os.sep, "/")).parts
        if any(p.startswith(".") for p in parts) or ignored_name(parts[-1]) or self._inside_output(path):
            return None
        return PurePosixPath(*parts)

    def _candidate_folder(self, path: str) -> bool:
        rel = os.path.relpath(path, self.root)
        return not (rel == ".." or rel.startswith(".." + os.sep) or self._inside_output(path)
                    or any(p.startswith(".") for p in rel.split(os.sep) if p != "."))

    def _inside_output(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real == self.out_real or real.startswith(self.out_real.rstrip(os.sep) + os.sep)

    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, *PurePosixPath(rel).parts)

    def _stamp(self, rel: str) -> Stamp | None:
        return _stamp(self._abs(rel))

    def _key(self, output: Path) -> str:
        return str(output).casefold() if self.fold_case else str(output)

    # start-up -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Process what INPUT_DIR holds now, as ``upscale -r`` would; files still being written wait to settle."""
        found = discover([self.spec], self.output_dir, recursive=True, fold_case=self.fold_case, **self.naming)
        # An empty inbox is normal for a watcher; `upscale` reports it as an error of the folder input.
        errors = [(s, why) for s, why in found.errors if found.jobs or "no image files" not in why]
        now, wall = time.monotonic(), time.time_ns()
        ready: list[tuple[Job, Stamp]] = []
        for job in found.jobs:
            rel = str(job.rel)
            self.claimed[self._key(job.output)] = rel
            stamp = _stamp(str(job.input))
            if stamp is None:
                continue  # gone since the walk
            if wall - stamp[1] < self.settle * 1e9:
                self.settler.touch(rel, stamp, now)
            else:
                ready.append((job, stamp))
        self._process(ready, errors)

    # events ---------------------------------------------------------------------------------------------------
    def saw(self, paths: Iterable[tuple[str, float]]) -> None:
        """Events named ``(path, when)``: new or changed candidates (re)start their wait from ``when``; vanished
        ones are forgotten."""
        for path, when in paths:
            if os.path.isdir(path):
                if self._candidate_folder(path):
                    self._walk(path, when)  # a folder moved or copied in (watchdog reports most of its files too)
                continue
            rel = self._rel(path)
            if rel is None:
                continue
            key = str(rel)
            stamp = _stamp(path)
            if stamp is None:
                self.settler.drop(key)
                self.handled.pop(key, None)
            else:
                self.settler.touch(key, stamp, when)

    def _walk(self, folder: str, when: float) -> None:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")
                           and not self._inside_output(os.path.join(dirpath, d))]
            self.saw((os.path.join(dirpath, f), when) for f in filenames)

    def settled(self, now: float) -> None:
        """Process the pending files that have settled and changed since they were last handled."""
        ready: list[tuple[Job, Stamp]] = []
        errors: list[tuple[str, str]] = []
        for key, stamp in self.settler.due(now, self._stamp):
            if self.handled.get(key) == stamp:
                continue  # an event that changed nothing (attributes, our own read, a second look)
            rel = PurePosixPath(key)
            jobs, errs = name_outputs([FoundInput(Path(self.spec, *rel.parts), rel, self.spec)], self.output_dir,
                                      **self.naming)
            if errs:
                errors.extend(errs)
                self.handled[key] = stamp
                continue
            job = jobs[0]
            owner = self.claimed.setdefault(self._key(job.output), key)
            if owner != key and self._stamp(owner) is not None:
                errors.append((str(job.input), f"{job.input}: its output {job.output} is already made from "
                                               f"{Path(self.spec, *PurePosixPath(owner).parts)}; rename one of them"))
                self.handled[key] = stamp
                continue
            self.claimed[self._key(job.output)] = key
            ready.append((job, stamp))
        if ready or errors:
            self._process(ready, errors)

    def _process(self, ready: list[tuple[Job, Stamp]], errors: list[tuple[str, str]]) -> None:
        self.run.process([job for job, _ in ready], input_errors=errors)
        for job, stamp in ready:
            self.handled[str(job.rel)] = stamp


def watch_folder(
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    settings: Settings | SettingsPolicy,
    *,
    settle: float = DEFAULT_SETTLE,
    poll: float | None = None,
    reporter: Reporter | None = None,
    manifest_path: Path | None = None,
    wait: bool = False,
    engine: Any = None,
    engine_loader: Callable[[RunSettings], Any] | None = None,
    handle_signals: bool = True,
    stop: threading.Event | None = None,
) -> Summary:
    """Watch ``input_dir`` and upscale into ``output_dir`` until a stop signal (or ``stop`` is set), then return
    the summary (see the module docstring). ``poll``: seconds between directory snapshots instead of native
    events. ``engine``/``engine_loader`` as for :func:`invsr_cli.run.runner.run_batch`.

    Raises ``ConfigError`` for a missing INPUT_DIR, OUTPUT_DIR equal to or above it, a negative ``settle`` or a
    non-positive ``poll``, or two existing inputs naming one output; ``LockedError`` when another run holds the
    output folder; ``WeightsUnavailableError``/``ModelLoadError`` when the models cannot be loaded;
    :class:`WatchError` when the folder cannot be watched.
    """
    from invsr_cli.run.runner import Run

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    _check_args(input_dir, output_dir, settle, poll)
    reporter = reporter or Reporter()
    with Run(settings, output_dir=output_dir, reporter=reporter, manifest_path=manifest_path, wait=wait,
             engine=engine, engine_loader=engine_loader, handle_signals=handle_signals, finish_in_flight=True) as run:
        run.load_models()
        if run.stopping:
            return run.summary
        state = _Watch(input_dir, output_dir, run, settle, run.policy)
        events = _Events(state.root)
        observer = _start_observer(events, state.root, poll)
        try:
            how = f"polling every {poll:g} s" if poll else f"{type(observer).__name__.removesuffix('Observer')} events"
            reporter.info(f"watching {input_dir} ({how}, settle {settle:g} s) -> {output_dir}")
            state.start()
            _loop(state, events, observer, run, stop)
        finally:
            observer.stop()
            observer.join(timeout=10)
    return run.summary


def _loop(state: _Watch, events: _Events, observer: Any, run: Any, stop: threading.Event | None) -> None:
    tick = max(0.05, min(MAX_TICK, state.settle / 4))
    while not run.stopping and not (stop is not None and stop.is_set()):
        if events.root_gone or not observer.is_alive() or not all(e.is_alive() for e in observer.emitters):
            run.summary.stopped = f"the watch on {state.spec} ended (was the folder removed or unmounted?)"
            return
        due = state.settler.next_due()
        events.wake.wait(tick if due is None else min(tick, max(due - time.monotonic(), 0.005)))
        events.wake.clear()
        state.saw(events.take())
        if not run.stopping:
            state.settled(time.monotonic())


def _start_observer(events: _Events, root: str, poll: float | None) -> Any:
    try:
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver
    except ImportError as e:  # a broken install: watchdog is a dependency
        raise WatchError(f"`invsr watch` needs the watchdog package ({e}); pip install watchdog") from None

    observer = PollingObserver(timeout=poll) if poll else Observer()
    try:
        observer.schedule(events, root, recursive=True, event_filter=_event_filter())
        observer.start()
    except OSError as e:
        raise WatchError(f"cannot watch {root}: {e.strerror or e}; on Linux raise fs.inotify.max_user_watches / "
                         "max_user_instances (sysctl), or pass --poll SECONDS") from None
    return observer


def _check_args(input_dir: Path, output_dir: Path, settle: float, poll: float | None) -> None:
    if not input_dir.is_dir():
        raise ConfigError(f"INPUT_DIR {input_dir} is not a folder" if input_dir.exists()
                          else f"INPUT_DIR {input_dir} does not exist")
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"OUTPUT_DIR {output_dir} exists and is not a folder")
    if not settle >= 0:
        raise ConfigError(f"`--settle` must be >= 0 seconds, got {settle}")
    if poll is not None and not poll > 0:
        raise ConfigError(f"`--poll` must be > 0 seconds, got {poll}")
    inp, out = os.path.realpath(input_dir), os.path.realpath(output_dir)
    if inp == out or inp.startswith(out.rstrip(os.sep) + os.sep):
        raise ConfigError(f"OUTPUT_DIR {output_dir} must not be INPUT_DIR {input_dir} or a folder above it "
                          "(the inputs would be inside the outputs); a folder inside INPUT_DIR is fine")
