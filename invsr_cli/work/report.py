"""Reporting: what a run tells the person or program that started it.

* a terminal gets a rich progress display (images and tiles, throughput, ETA) with failures printed above it;
* anything else (cron, pipes, files) gets one plain line per image, with no control characters;
* ``--json`` gets one JSON object per image on stdout and a final summary object;
* ``--quiet`` keeps only failures and errors.

The runner calls a :class:`Reporter`; it never prints by itself. When the reader of stdout goes away
(``invsr upscale ... --json | head -n 1``) the reporter raises :class:`StdoutClosed`, which ends the run.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TextIO

__all__ = [
    "Outcome",
    "Summary",
    "Reporter",
    "PlainReporter",
    "JsonReporter",
    "RichReporter",
    "StdoutClosed",
    "make_reporter",
]


class StdoutClosed(BaseException):
    """The reader of the report went away (``| head -n 1``): nobody is listening, so the run ends.

    A ``BaseException``, like ``KeyboardInterrupt``: it must stop the run, not be recorded as one image's failure
    by the runner's ``except Exception`` handlers. The CLI exits quietly on it. The stream has already been
    pointed at /dev/null, so the runner's closing summary and Python's flush at exit write nowhere instead of
    raising ``BrokenPipeError`` again ("Exception ignored ... BrokenPipeError")."""


def _silence(stream: TextIO) -> None:
    """Point ``stream``'s file descriptor at /dev/null (what the Python docs recommend after EPIPE on stdout)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a StringIO in a test)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _write_line(stream: TextIO, line: str) -> None:
    try:
        stream.write(line + "\n")
        stream.flush()
    except BrokenPipeError as e:
        _silence(stream)
        raise StdoutClosed(f"{getattr(stream, 'name', 'output')} closed by its reader") from e


@dataclass
class Outcome:
    input: str
    output: str
    status: str  # "done" | "skipped" | "failed" | "planned"
    reason: str = ""
    seconds: float = 0.0
    width: int = 0  # output size
    height: int = 0
    tiles: int = 0
    preset: str = ""
    timesteps: tuple[int, ...] = ()
    degradation: dict[str, float] | None = None  # `auto`: the estimates that chose the preset
    rule: str = ""  # `auto`: the rule that chose it
    tile: int = 0  # the tile plan the image ran with (after any out-of-memory re-plan)
    overlap: int = 0
    batch_sizes: tuple[int, ...] = ()  # the engine batches its tiles ran in
    stage_seconds: dict[str, float] | None = None  # with -v: noise predictor, VAE, UNet, write
    settings: Any = field(default=None, compare=False, repr=False)  # the Settings it was made with
    models: dict[str, Any] | None = field(default=None, compare=False, repr=False)  # the weights' identity
    passes: int = 1  # model passes (2: a target above x4)
    frames: int = 1  # an animation's (or a video's, or a video segment's) frames
    segment: int | None = None  # a video segment's index (its output: the segment's file); None otherwise
    segments: int = 0  # a video: the segments it was made of

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON lines and the manifest (the settings and the models go in as their own dicts, by
        the caller)."""
        d = {k: v for k, v in asdict(replace(self, settings=None, models=None)).items()
             if k not in ("settings", "models")}
        d["timesteps"] = list(self.timesteps)
        d["batch_sizes"] = list(self.batch_sizes)
        for optional in ("degradation", "stage_seconds", "segment"):
            if d[optional] is None:
                del d[optional]
        if not d["rule"]:
            del d["rule"]
        if not d["segments"]:
            del d["segments"]
        return d

    def to_record(self) -> dict[str, Any]:
        """The one record format of an outcome (the manifest's lines, a Ray worker's rows, what the HTML report
        reads): :meth:`to_dict` with the settings (``Settings.to_dict``) and the models, when known."""
        d = self.to_dict()
        if self.settings is not None:
            d["settings"] = self.settings.to_dict()
        if self.models is not None:
            d["models"] = self.models
        return d

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Outcome:
        """The outcome a :meth:`to_record` record holds (``Outcome.from_record(o.to_record()) == o``, settings and
        models too). Keys it does not know (a manifest's fingerprint, time, input stamp) are ignored; missing
        ones take their defaults."""
        from invsr_cli.settings.settings import Settings

        kw = {k: rec[k] for k in _RECORD_FIELDS if k in rec}
        for k in ("timesteps", "batch_sizes"):
            kw[k] = tuple(kw.get(k) or ())
        s = rec.get("settings")
        kw["settings"] = Settings.from_dict(s) if isinstance(s, dict) else None
        kw["models"] = rec.get("models")
        return cls(**kw)


_RECORD_FIELDS = tuple(f.name for f in fields(Outcome) if f.name not in ("settings", "models"))


def failed(of: Any, reason: str) -> Outcome:
    """The failed outcome of one image: ``of`` is its job, or anything holding it as ``.job`` (a task, an image in
    flight). Every executor builds its failures here."""
    job = getattr(of, "job", of)
    return Outcome(str(job.input), str(job.output), "failed", reason=reason)


def not_attempted(of: Any, why: str) -> Outcome:
    """The outcome of an image a run had to leave (``why``: a full disk, no worker left): failed, "not attempted"."""
    return failed(of, f"not attempted: {why}")


@dataclass
class Summary:
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    planned: int = 0
    output_pixels: int = 0
    tiles: int = 0
    wall_seconds: float = 0.0
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when a signal stopped the run
    stopped: str | None = None  # why the run stopped early (e.g. disk full)
    outcomes: list[Outcome] = field(default_factory=list, repr=False)

    def line(self) -> str:
        parts = [
            f"processed {self.processed}",
            f"skipped {self.skipped}",
            f"failed {self.failed}",
            f"output {self.output_pixels / 1e6:.2f} MP",
            f"wall {self.wall_seconds:.1f} s",
        ]
        if self.planned:
            parts.insert(0, f"planned {self.planned}")
        text = "summary: " + ", ".join(parts)
        if self.interrupted:
            text += f" (interrupted by {self.interrupted})"
        if self.stopped:
            text += f" (stopped early: {self.stopped})"
        return text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("outcomes")
        d["type"] = "summary"
        return d


class Reporter:
    """Base reporter: the runner's callbacks. Subclasses override what they show."""

    def start(self, total: int, to_do: int, tiles: int) -> None: ...

    def tiles_planned(self, n: int) -> None:
        """``n`` more tiles will be computed: the runner calls it when it has tiled an image (``tiles`` in
        :meth:`start` counts only what was known then, usually 0, since images are tiled as they are read)."""

    def tiles_done(self, n: int) -> None: ...

    def frame_done(self, path: str, done: int, frames: int) -> None:
        """An animation's frame is finished: ``done`` of its ``frames`` (in this pass), so a long animation shows
        progress frame by frame. Not called for stills."""

    def segment(self, o: Outcome, video: str, count: int, progress: dict[str, Any]) -> None:
        """A video segment came back (``o.segment`` of ``count``; ``o.output`` its file; ``video`` the video's
        output); ``progress``: ``segments_done``, ``frames_done``, ``video_frames`` and ``eta_seconds`` of the video."""

    def stage(self, text: str) -> None:
        """What the run is doing before its first tile (e.g. ``"loading the models"``); ``""`` when it is done.
        The progress display shows it; logs need no line for it."""

    def info(self, text: str) -> None:
        """A detail shown only with -v (the models being loaded, the device, dtype and model identities)."""

    def outcome(self, o: Outcome) -> None: ...

    def warning(self, text: str) -> None:
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def finish(self, summary: Summary) -> None: ...

    def close(self) -> None: ...


def _plain_line(o: Outcome) -> str:
    if o.status == "failed":
        return f"failed  {o.input}: {o.reason}"
    if o.status == "skipped":
        return f"skipped {o.input} -> {o.output} ({o.reason})"
    extra = f" preset={o.preset}" if o.degradation is not None else ""
    verb = "plan   " if o.status == "planned" else "done   "
    timing = "" if o.status == "planned" else f" {o.seconds:.2f}s"
    steps = f" steps={len(o.timesteps)}" if o.timesteps else ""
    extra += (f" passes={o.passes}" if o.passes > 1 else "") + (f" frames={o.frames}" if o.frames > 1 else "")
    if o.segments:  # a video: its segments, and in a dry run what the plan says of them and the estimate
        extra += f" segments={o.segments}" + (f" ({o.reason})" if o.status == "planned" and o.reason else "")
    return f"{verb} {o.input} -> {o.output} {o.width}x{o.height} tiles={o.tiles}{steps}{extra}{timing}"


def _detail_lines(o: Outcome) -> list[str]:
    """-v: what an image ran with, indented under its line."""
    if o.status != "done":
        return []
    steps = ",".join(str(t) for t in o.timesteps)
    lines = [f"        plan: {o.tiles} tile(s) of {o.tile} px, overlap {o.overlap}; schedule {steps}; "
             f"batches {','.join(str(b) for b in o.batch_sizes) or '-'}"]
    if o.rule:
        lines.append(f"        auto: {o.rule}")
    if o.stage_seconds:
        lines.append("        seconds: " + ", ".join(f"{k} {v:.3f}" for k, v in o.stage_seconds.items()))
    return lines


def _segment_line(o: Outcome, video: str, count: int, progress: dict[str, Any]) -> str:
    k = (o.segment or 0) + 1
    eta = progress.get("eta_seconds")
    when = f", about {duration(eta)} left" if eta else ""
    what = f"done {o.frames} frames {o.seconds:.2f}s" if o.status == "done" else f"failed: {o.reason}"
    return (f"segment {k}/{count} of {video}: {what}; video {progress['frames_done']}/{progress['video_frames']} "
            f"frames{when}")


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``42s``."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def _clean(text: str) -> str:
    """No control characters in plain output (file names can hold anything)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


LONG_ANIMATION = 50  # frames: from here a plain log says how far an animation is, every tenth


class PlainReporter(Reporter):
    """One line per image on ``out``; failures also when quiet (on ``err``)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, quiet: bool = False,
                 verbose: bool = False):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.quiet = quiet
        self.verbose = verbose

    def outcome(self, o: Outcome) -> None:
        if o.status == "failed":
            _write_line(self.err if self.quiet else self.out, _clean(_plain_line(o)))
        elif not self.quiet:
            _write_line(self.out, _clean(_plain_line(o)))
            if self.verbose:
                for line in _detail_lines(o):
                    _write_line(self.out, _clean(line))

    def info(self, text: str) -> None:
        if self.verbose:
            _write_line(self.err, _clean(text))

    def frame_done(self, path: str, done: int, frames: int) -> None:
        """A long animation (:data:`LONG_ANIMATION` frames or more) says on ``err`` when each tenth is done."""
        if not self.quiet and frames >= LONG_ANIMATION and done * 10 // frames != (done - 1) * 10 // frames:
            _write_line(self.err, _clean(f"frames {done}/{frames} of {path}"))

    def segment(self, o: Outcome, video: str, count: int, progress: dict[str, Any]) -> None:
        """A line per video segment on ``err`` (stdout keeps one line per input)."""
        if not self.quiet or o.status != "done":
            _write_line(self.err, _clean(_segment_line(o, video, count, progress)))

    def warning(self, text: str) -> None:
        _write_line(self.err, _clean(f"warning: {text}"))

    def finish(self, summary: Summary) -> None:
        if not self.quiet or summary.failed or summary.interrupted or summary.stopped:
            _write_line(self.out if not self.quiet else self.err, summary.line())


class JsonReporter(Reporter):
    """One JSON object per image on stdout, then a summary object; warnings go to stderr as text."""

    def __init__(self, out: TextIO | None = None):
        self.out = out or sys.stdout

    def _emit(self, obj: dict[str, Any]) -> None:
        line = json.dumps(obj, ensure_ascii=False, default=str)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a non-UTF-8 file name (surrogate escapes): \udcXX escapes keep it valid JSON
            line = json.dumps(obj, ensure_ascii=True, default=str)
        _write_line(self.out, line)

    def outcome(self, o: Outcome) -> None:
        self._emit({"type": "image", **o.to_dict()})

    def segment(self, o: Outcome, video: str, count: int, progress: dict[str, Any]) -> None:
        self._emit({"type": "segment", **o.to_dict(), "video": video, "segments": count, **progress})

    def finish(self, summary: Summary) -> None:
        self._emit(summary.to_dict())


class RichReporter(PlainReporter):
    """A live progress display on a terminal (stderr), with per-image lines printed above it."""

    def __init__(self, quiet: bool = False, verbose: bool = False, console: Any = None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.table import Column

        self.console = console if console is not None else Console(stderr=True)
        super().__init__(quiet=quiet, verbose=verbose)
        right = {"table_column": Column(justify="right", no_wrap=True)}  # numbers line up from row to row
        self.progress = Progress(
            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(),
            MofNCompleteColumn(**right),
            TextColumn("{task.fields[rate]}", **right),
            TimeElapsedColumn(**right),
            TimeRemainingColumn(**right),
            TextColumn("{task.fields[note]}", table_column=Column(no_wrap=True)),
            console=self.console,
            transient=True,
        )
        self._images = self._tiles = None
        self._tiles_n = 0
        self._frames: dict[str, Any] = {}  # an animation in progress -> its frames bar
        self._to_do = 0
        self._tiles_known = 0  # tiles of the images tiled so far
        self._images_known = 0  # images tiled (or failed before tiling): the tiles' total is known once all are

    def start(self, total: int, to_do: int, tiles: int) -> None:
        self.progress.start()
        self._to_do = to_do
        self._tiles_known = tiles
        self._images = self.progress.add_task("images", total=to_do, rate="", note="")
        # the total grows as images are read: unknown (shown as "?", the bar pulsing) until every image is tiled
        self._tiles = self.progress.add_task("tiles", total=None, rate="", note="")

    def _tiles_total(self) -> None:
        if self._tiles is not None and self._images_known >= self._to_do:
            self.progress.update(self._tiles, total=self._tiles_known)

    def tiles_planned(self, n: int) -> None:
        if self._tiles is not None:  # one call per image tiled (0 tiles: an image that needs none)
            self._tiles_known += n
            self._images_known += 1
            self._tiles_total()

    def stage(self, text: str) -> None:
        if self._images is not None:
            self.progress.update(self._images, note=text)

    def tiles_done(self, n: int) -> None:
        if self._tiles is not None:
            self._tiles_n += n
            task = self.progress.tasks[self._tiles]
            rate = f"{self._tiles_n / task.elapsed:.2f} tiles/s" if task.elapsed else ""
            self.progress.update(self._tiles, advance=n, rate=rate)

    def frame_done(self, path: str, done: int, frames: int) -> None:
        """A bar per animation in progress (its frames), removed when its last frame is done."""
        from pathlib import Path

        if self._images is None:
            return
        bar = self._frames.get(path)
        if bar is None:
            bar = self._frames[path] = self.progress.add_task(f"frames of {_clean(Path(path).name)}", total=frames,
                                                               rate="", note="")
        self.progress.update(bar, completed=done)
        if done >= frames:
            self.progress.remove_task(self._frames.pop(path))

    def segment(self, o: Outcome, video: str, count: int, progress: dict[str, Any]) -> None:
        """A bar per video in progress (its frames, with the time remaining), removed when it is all done."""
        from pathlib import Path

        if o.status != "done" or self.verbose:
            super().segment(o, video, count, progress)
        if self._images is None:
            return
        key = f"video:{video}"
        bar = self._frames.get(key)
        if bar is None:
            bar = self._frames[key] = self.progress.add_task(f"video {_clean(Path(video).name)}",
                                                              total=progress["video_frames"], rate="", note="")
        self.progress.update(bar, completed=progress["frames_done"],
                             note=f"segment {progress['segments_done']}/{count}")
        if progress["frames_done"] >= progress["video_frames"]:
            self.progress.remove_task(self._frames.pop(key))

    def outcome(self, o: Outcome) -> None:
        from rich.markup import escape

        if o.status == "failed":
            self.console.print(f"[red]failed[/red]  {escape(_clean(o.input))}: {escape(_clean(o.reason))}",
                               markup=True, highlight=False)
        elif not self.quiet:
            self.console.print(_clean(_plain_line(o)), markup=False, highlight=False)
            if self.verbose:
                for line in _detail_lines(o):
                    self.console.print(_clean(line), markup=False, highlight=False)
        if self._images is not None and o.status != "skipped":
            self.progress.update(self._images, advance=1, note="")
            if o.status == "failed" and not o.tiles:  # failed before it was tiled: it adds no tiles
                self._images_known += 1
                self._tiles_total()

    def warning(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(f"[yellow]warning:[/yellow] {escape(_clean(text))}", highlight=False)

    def info(self, text: str) -> None:
        if self.verbose:
            self.console.print(_clean(text), markup=False, highlight=False)

    def finish(self, summary: Summary) -> None:
        self.close()
        self.console.print(summary.line(), markup=False, highlight=False)

    def close(self) -> None:
        self.progress.stop()


def make_reporter(*, json_output: bool, quiet: bool, verbose: bool, tty: bool | None = None) -> Reporter:
    if json_output:
        return JsonReporter()
    if tty is None:
        tty = sys.stderr.isatty()
    if tty and not quiet:
        return RichReporter(quiet=quiet, verbose=verbose)
    return PlainReporter(quiet=quiet, verbose=verbose)
