"""Videos in a run: the driver's side. A video is cut at keyframes into segments (about ``segment_seconds`` each);
each segment is a unit of work (:mod:`invsr_cli.work.segment`) that any executor runs; this process records each
segment's outcome in the manifest and, when the last is in, joins them (:func:`invsr_cli.imaging.video.remux`, no
re-encoding) with the input's audio, subtitle and data streams into the video's output, written atomically.

Segment files live in ``OUTPUT_DIR/.invsr-segments/<output>-<key>/``. The key hashes everything a segment's bytes
depend on: the output path, the input's size and mtime, the run's fingerprint (settings and weights), the segment
plan and the encoder. A run that was killed therefore finds the segments it finished (each was renamed into place
only when complete) and computes only the missing ones; a changed input or other settings get a fresh folder, and
the old one is removed. The folder is removed when the video's output is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from invsr_cli.base.errors import DiskFullError, InvSRError, reason_of
from invsr_cli.work.job import Job
from invsr_cli.work.report import Outcome

__all__ = ["SEGMENTS_FOLDER", "VideoPlan", "Videos", "is_video_job", "plan_outcome", "plan_video",
           "refuse_unknown_encoder", "seconds_per_tile", "segment_folder", "job_fingerprint"]

SEGMENTS_FOLDER = ".invsr-segments"


def is_video_job(job: Job) -> bool:
    return job.format == "video"


@dataclass(eq=False)
class VideoPlan:
    """One video of the run: its probe, its segments and their files, what came back so far."""

    job: Job
    info: Any  # imaging.video.VideoInfo
    segments: list[Any]  # imaging.video.Segment
    files: list[Path]
    encoder: str
    folder: Path
    outcomes: dict[int, Outcome] = field(default_factory=dict)  # segment index -> its outcome (this run)
    reused: set[int] = field(default_factory=set)  # segments an earlier run finished
    mine: set[int] | None = None  # with --shard: the missing segments this shard computes (None: all of them)
    failed: bool = False
    waiting: bool = False  # its segments are done here, others are other shards' to make
    first_back: float = 0.0  # when its first segment came back

    @property
    def count(self) -> int:
        return len(self.segments)

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.segments)

    def missing(self) -> list[int]:
        return [s.index for s in self.segments if s.index not in self.reused]

    def is_done(self, i: int) -> bool:
        """Segment ``i`` was made by an earlier run or came back done in this one."""
        return i in self.reused or (i in self.outcomes and self.outcomes[i].status == "done")

    def done_count(self) -> int:
        return sum(1 for i in range(self.count) if self.is_done(i))

    def complete(self) -> bool:
        """Every segment this run computes is done (with --shard: this shard's; the others are on disk or not)."""
        return all(map(self.is_done, range(self.count) if self.mine is None else self.mine))

    def tasks(self, run: Any) -> list[Any]:
        """The segments to compute, as tasks (``index`` is renumbered by the caller)."""
        from invsr_cli.work.inputs import InputInfo
        from invsr_cli.work.process import ImageTask
        from invsr_cli.work.segment import SegmentSpec

        tasks = []
        for i in self.missing() if self.mine is None else sorted(self.mine):
            seg = self.segments[i]
            spec = SegmentSpec(self.info.trimmed(seg), seg.index, self.count, self.encoder, crf=run.crf,
                               pix_fmt=run.pix_fmt)
            job = replace(self.job, output=self.files[i])
            info = InputInfo(self.info.width, self.info.height, "video", seg.frames, True)
            tasks.append(ImageTask(job, 0, info=info, segment=spec))
        return tasks


_VIDEO_MARK = "-v"  # run fingerprints are hex with "-": this marks the video part


def job_fingerprint(job: Job, fingerprint: str, run: Any) -> str:
    """What ``job``'s output depends on: the run's ``fingerprint`` (settings and weights, what an image's depends
    on), and for a video the video keys too (:data:`~invsr_cli.settings.settings.VIDEO_OUTPUT_KEYS`): another
    ``--crf`` makes the videos stale, not the images."""
    if not is_video_job(job):
        return fingerprint
    from invsr_cli.settings.settings import VIDEO_OUTPUT_KEYS

    return f"{fingerprint}{_VIDEO_MARK}{_digest({k: getattr(run, k) for k in VIDEO_OUTPUT_KEYS})[:8]}"


def refuse_unknown_encoder(jobs: Any, run: Any) -> None:
    """Before any work: a ``--video-codec`` the bundled FFmpeg has no encoder for is a usage error (exit 2) when
    there is a video to encode, not a failure of every video."""
    if run.video_codec and any(is_video_job(job) for job in jobs):
        from invsr_cli.imaging.video import choose_encoder

        choose_encoder("", run.video_codec)


def plan_video(job: Job, run: Any, output_dir: Path, fingerprint: str, *, tidy: bool = True) -> VideoPlan:
    """Probe ``job``'s video, cut it into segments, find the segment files an earlier run finished (and, with
    ``tidy``, remove the folders of other configurations of this output; a dry run removes nothing). Raises
    InvSRError naming the file."""
    from invsr_cli.base.errors import InputError
    from invsr_cli.base.paths import display_path
    from invsr_cli.imaging.video import choose_encoder, muxer_for, plan_segments, probe, segment_suffix
    from invsr_cli.run.manifest import input_stamp
    from invsr_cli.work.inputs import check_pixels

    info = probe(job.input)
    check_pixels(job.input, (info.width, info.height), 1, run.max_pixels)  # --max-pixels counts one frame
    segments = plan_segments(info, run.segment_seconds, start=run.start, end=run.end, max_frames=run.max_frames)
    if not segments:
        raise InputError(f"{display_path(job.input)}: no frames between --start {run.start} and --end {run.end} "
                         f"(the video lasts {info.duration:.3f} s)")
    encoder = choose_encoder(info.codec, run.video_codec, suffix=job.output.suffix)
    muxer_for(job.output)  # an output extension no container writes fails now, not after compute
    key = {"output": str(job.output), **input_stamp(job.input), "fingerprint": fingerprint, "encoder": encoder,
           "crf": run.crf, "pix_fmt": run.pix_fmt,
           "segments": [(s.first, s.frames) for s in segments]}
    folder = segment_folder(output_dir, job.output, _digest(key))
    if tidy:
        _remove_other_configurations(folder)
    suffix = segment_suffix(encoder)
    files = [folder / f"{s.index:05d}{suffix}" for s in segments]
    reused = {s.index for s, f in zip(segments, files, strict=True) if f.is_file()}
    return VideoPlan(job, info, segments, files, encoder, folder, reused=reused)


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def segment_folder(output_dir: Path, output: Path, key: str) -> Path:
    """``OUTPUT_DIR/.invsr-segments/<output's name>-<hash of its path>-<key>``."""
    return Path(output_dir) / SEGMENTS_FOLDER / f"{output.name}-{_digest(str(output))[:8]}-{key}"


def _remove_other_configurations(folder: Path) -> None:
    prefix = folder.name.rsplit("-", 1)[0] + "-"
    parent = folder.parent
    if not parent.is_dir():
        return
    for other in parent.iterdir():
        if other.name.startswith(prefix) and other != folder and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)


def seconds_per_tile(manifest: Any, fingerprint: str) -> tuple[float, int] | None:
    """The median seconds per tile of the outputs this folder's manifests say were made with these settings and
    weights (``fingerprint``), and how many: what a dry run's estimate rests on (None: no such output yet)."""
    rates = sorted(r["seconds"] / r["tiles"] for r in manifest.records()
                   if r.get("status") == "done" and str(r.get("fingerprint")).split(_VIDEO_MARK)[0] == fingerprint
                   and r.get("tiles") and isinstance(r.get("seconds"), (int, float)) and "video" not in r)
    if not rates:
        return None
    return rates[len(rates) // 2], len(rates)


def plan_outcome(job: Job, run: Any, image: Any, output_dir: Path, fingerprint: str, manifest: Any) -> Outcome:
    """``--dry-run`` for a video: its frames, segments (those an earlier run finished), each frame's tiles and
    output size, and an estimate of the compute from this folder's earlier outputs."""
    from invsr_cli.work.inputs import plan_image
    from invsr_cli.work.segment import even_size

    plan = plan_video(job, run, output_dir, fingerprint, tidy=False)
    frame = plan_image(job.input, plan.info.width, plan.info.height, 1, image, run)
    tiles = frame.n_tiles * plan.frames
    w, h = even_size(frame.size.output, run.pix_fmt)
    notes = [f"{plan.count} segments of about {run.segment_seconds:g} s"]
    if plan.reused:
        notes.append(f"{len(plan.reused)} done by an earlier run")
    todo_tiles = frame.n_tiles * sum(s.frames for s in plan.segments if s.index not in plan.reused)
    rate = seconds_per_tile(manifest, fingerprint) if manifest is not None else None
    if rate is not None:
        from invsr_cli.work.report import duration

        notes.append(f"about {duration(rate[0] * todo_tiles)} of compute at {rate[0]:.3g} s/tile (the median of "
                     f"{rate[1]} earlier outputs in this folder)")
    else:
        notes.append("no estimate: no output made with these settings in this folder yet")
    return Outcome(str(job.input), str(job.output), "planned", width=w, height=h, tiles=tiles,
                   preset=image.preset, timesteps=image.timesteps, reason="; ".join(notes), tile=frame.tiles[0].tile,
                   overlap=frame.tiles[0].overlap, passes=frame.size.passes, frames=plan.frames, segments=plan.count)


class Videos:
    """The run's videos: plans them into segment tasks, takes the segments' outcomes, records them and, when a
    video's segments are all in, writes the video and records its outcome (through ``rec``, the run's
    Recorder)."""

    def __init__(self, rec: Any, output_dir: Path, policy: Any, shard: Any = None) -> None:
        self.rec = rec
        self.output_dir = Path(output_dir)
        self.policy = policy
        self.shard = shard  # --shard: a video's segments are spread over the shards (by "<rel>#<segment>")
        self.plans: list[VideoPlan] = []
        self.by_file: dict[str, tuple[VideoPlan, int]] = {}

    def plan(self, job: Job) -> list[Any]:
        """The segment tasks of ``job``'s video (none when an earlier run made every segment: it is joined now).
        A video that cannot be planned is recorded as failed."""
        from invsr_cli.work.inputs import skip_reason

        run = self.policy.run
        try:
            plan = plan_video(job, run, self.output_dir, self.rec.fingerprint)
        except InvSRError as e:
            self.rec.record(Outcome(str(job.input), str(job.output), "failed", reason=reason_of(e, job)), job)
            return []
        if (why := skip_reason(plan.info, run)) is not None:
            self.rec.record(Outcome(str(job.input), str(job.output), "skipped", reason=why))
            return []
        self.plans.append(plan)
        for i, f in enumerate(plan.files):
            self.by_file[str(f)] = (plan, i)
        if plan.reused:
            self.rec.reporter.info(f"{job.input}: {len(plan.reused)} of {plan.count} segments kept from an "
                                   f"earlier run")
        if self.shard is not None:
            from invsr_cli.base.atomic import remove_temps_of

            plan.mine = {i for i in plan.missing() if self.shard.holds(f"{job.rel}#{i}")}
            # a shard cleans only its own segments' temporary files (a plain run cleans the whole folder at start)
            remove_temps_of(plan.files[i] for i in plan.mine)
        tasks = plan.tasks(run)
        if not tasks:
            self._join_when_all_there(plan)
        return tasks

    def owns(self, o: Outcome) -> bool:
        return o.output in self.by_file

    def take(self, o: Outcome) -> None:
        """A segment's outcome: record it (manifest, progress) and join the video when it was the last."""
        plan, i = self.by_file[o.output]
        o = replace(o, segment=i)
        plan.outcomes[i] = o
        self.rec.record_segment(o, plan.job, plan.count, self._progress(plan))
        if o.status != "done":
            if not plan.failed:
                plan.failed = True
                self.rec.record(Outcome(str(plan.job.input), str(plan.job.output), "failed",
                                        reason=f"segment {i + 1}/{plan.count}: {o.reason}", frames=plan.frames,
                                        segments=plan.count), plan.job)
            return
        if not plan.failed and plan.complete():
            self._join_when_all_there(plan)

    def _join_when_all_there(self, plan: VideoPlan) -> None:
        """This run's segments are done: join the video when every segment file is there. With --shard, the others
        are other shards': the shard that finishes last finds them all and joins."""
        missing = [i for i, f in enumerate(plan.files) if not f.is_file()]
        if not missing:
            self._join(plan)
            return
        plan.waiting = True
        self.rec.record(Outcome(str(plan.job.input), str(plan.job.output), "skipped",
                                reason=f"{len(missing)} of its {plan.count} segments are other shards' (the last "
                                "shard to finish joins them)", frames=plan.frames, segments=plan.count))

    def _progress(self, plan: VideoPlan) -> dict[str, Any]:
        """How far the video is, and the time left at the rate its segments have come back at so far (the first
        segment's own seconds per frame until a second one is in: the wall time before it includes loading)."""
        done = [s for s in plan.segments if plan.is_done(s.index)]
        frames_done = sum(s.frames for s in done)
        made = [plan.outcomes[s.index] for s in done if s.index in plan.outcomes]
        now = time.perf_counter()
        if len(made) == 1:
            plan.first_back = now
        left = plan.frames - frames_done
        eta = None
        if made and left:
            if len(made) == 1:
                eta = made[0].seconds / max(made[0].frames, 1) * left
            else:
                eta = (now - plan.first_back) / sum(o.frames for o in made[1:]) * left
        return {"segments_done": len(done), "frames_done": frames_done, "video_frames": plan.frames,
                "eta_seconds": 0.0 if not left else None if eta is None else round(eta, 1)}

    def _join(self, plan: VideoPlan) -> None:
        """Every segment is in: remux them with the input's other streams into the output (atomically), record
        the video's outcome, remove the segments. A failure (a full disk) keeps the segments for the next run."""
        from invsr_cli.imaging.video import probe, remux

        job = plan.job
        start = time.perf_counter()
        sample = next((o for o in plan.outcomes.values() if o.status == "done"), None)
        settings = sample.settings if sample is not None else None
        try:
            remux(job.output, plan.files, plan.info, provenance=self._provenance(settings, sample))
            out = probe(job.output)
        except InvSRError as e:
            if isinstance(e, DiskFullError):
                self.rec.summary.stopped = f"disk full or I/O error writing {job.output}"
            self.rec.record(Outcome(str(job.input), str(job.output), "failed",
                                    reason=f"joining the segments: {reason_of(e, job)} (the {plan.count} segments "
                                    "are kept: run again to retry)", frames=plan.frames, segments=plan.count), job)
            return
        seconds = sum(o.seconds for o in plan.outcomes.values()) + time.perf_counter() - start
        base = sample or Outcome(str(job.input), str(job.output), "done")
        self.rec.record(replace(
            base, input=str(job.input), output=str(job.output), status="done", reason="", seconds=round(seconds, 3),
            width=out.width, height=out.height, tiles=sum(o.tiles for o in plan.outcomes.values()),
            batch_sizes=(), frames=out.frames, segment=None, segments=plan.count), job)
        shutil.rmtree(plan.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            plan.folder.parent.rmdir()  # the last video's: leave no empty folder behind

    def _provenance(self, settings: Any, sample: Outcome | None) -> dict[str, Any] | None:
        from invsr_cli.imaging.provenance import provenance_record

        if settings is None:
            s = self.policy.unmeasured
            from invsr_cli.settings.settings import Settings

            settings = Settings(self.policy.run, s)
        if not settings.provenance:
            return None
        models = sample.models if sample is not None and sample.models is not None else self.rec.models
        return provenance_record(settings.to_dict(), models=models)

    def unfinished(self) -> Iterator[VideoPlan]:
        """Videos the run left before their last segment (a stop, a full disk): their segments are kept."""
        for plan in self.plans:
            if not plan.failed and not plan.waiting and not plan.complete():
                yield plan
