"""Videos through `invsr upscale`: segments as units of work, the driver's join, resume, failures (tiny models;
videos made here with PyAV, a few dozen 32x32 frames, so each frame is one 32 px tile)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from invsr_cli.base.atomic import TEMP_SUFFIX  # noqa: E402
from invsr_cli.imaging import video as V  # noqa: E402
from invsr_cli.run.videos import SEGMENTS_FOLDER  # noqa: E402
from tests import imagegen  # noqa: E402
from tests.harness import (  # noqa: E402
    Collect,
    invsr,
    invsr_popen,
    manifest_records,
    run_in_process,
    subprocess_env,
    temps,
    tiny_settings,
)
from tests.videogen import make_audio, make_video  # noqa: E402

FRAMES = 12  # 1 s at 12 fps, a keyframe every 3 frames: 4 segments at --segment-seconds 0.25


def _clip(folder: Path, name: str = "clip.mp4", **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    kw = {"frames": FRAMES, "fps": 12, "gop": 3, "width": 32, "height": 32, **kw}
    return make_video(folder / name, **kw)


def _frames(path: Path) -> list[np.ndarray]:
    return [f.rgb for f in V.iter_frames(V.probe(path))]


def _packets(path: Path, kind: str) -> list[bytes]:
    with av.open(str(path)) as c:
        s = [x for x in c.streams if x.type == kind][0]
        return [bytes(p) for p in c.demux(s) if p.size]


def _segment_records(out: Path) -> list[dict]:
    return [r for r in manifest_records(out) if "video" in r]


def test_video_output_keeps_frames_timestamps_audio_rotation_and_records_segments(tmp_path, tiny_models,
                                                                                    tiny_engine):
    src = _clip(tmp_path / "in", rotation=90, metadata={"title": "hello"})
    out = tmp_path / "out"
    rec, summary = run_in_process([tmp_path / "in"], out, settings=tiny_settings(tiny_models, segment_seconds=0.25),
                                  engine=tiny_engine)
    assert summary.processed == 1 and not summary.failed, rec.outcomes
    (video,) = rec.outcomes
    assert (video.frames, video.segments, video.width, video.height) == (FRAMES, 4, 128, 128)
    got, info = V.probe(out / "clip.mp4"), V.probe(src)
    assert got.frames == FRAMES and got.pts == info.pts and got.time_base == info.time_base
    assert abs(got.duration - info.duration) <= 1 / 12
    assert (got.width, got.height) == (4 * info.width, 4 * info.height)
    assert got.rotation == 90 and got.codec == "h264"
    assert _packets(out / "clip.mp4", "audio") == _packets(src, "audio")  # copied, not re-encoded
    assert got.metadata["title"] == "hello"
    provenance = json.loads(got.metadata[V.PROVENANCE_KEY])
    assert provenance["tile"] == 32 and provenance["timesteps"] == [200]
    # one manifest line per segment (keyed by its file), then the video's; the segment files are gone
    segs = _segment_records(out)
    assert [r["segment"] for r in segs] == [0, 1, 2, 3] and all(r["status"] == "done" for r in segs)
    assert [r["frames"] for r in segs] == [3, 3, 3, 3]
    assert {r["video"] for r in segs} == {str(out / "clip.mp4")}
    (last,) = [r for r in manifest_records(out) if "video" not in r]
    assert last["output"] == str(out / "clip.mp4") and last["segments"] == 4 and last["frames"] == FRAMES
    assert sorted(p.name for p in out.iterdir()) == [".invsr-manifest.jsonl", ".invsr.lock", "clip.mp4"]
    assert not temps(out)
    # up to date: skipped as an image would be
    rec, summary = run_in_process([tmp_path / "in"], out, settings=tiny_settings(tiny_models, segment_seconds=0.25),
                                  engine=tiny_engine)
    assert rec.status("clip.mp4") == ("skipped", "up to date")


def test_segment_boundaries_are_invisible(tmp_path, tiny_models, tiny_engine):
    """Four segments and one give the same frames: a frame's tiles keep their seeds, whatever its segment. With
    --crf 0 x264 is lossless on the yuv420p frames it is given, so the decoded frames compare exactly."""
    _clip(tmp_path / "in", audio=False)
    decoded = {}
    for seconds in (0.25, 100.0):
        out = tmp_path / f"out{seconds}"
        _, summary = run_in_process([tmp_path / "in"], out, engine=tiny_engine,
                                    settings=tiny_settings(tiny_models, segment_seconds=seconds, crf=0))
        assert summary.processed == 1
        decoded[seconds] = _frames(out / "clip.mp4")
    assert len(decoded[0.25]) == FRAMES
    for a, b in zip(decoded[0.25], decoded[100.0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(decoded[0.25][0], decoded[0.25][-1])  # the frames do differ from each other


def test_start_end_max_frames_and_dry_run(tmp_path, tiny_models, tiny_engine):
    _clip(tmp_path / "in", frames=24)
    out = tmp_path / "out"
    s = tiny_settings(tiny_models, segment_seconds=0.25, start=0.6, end=1.5)
    rec, summary = run_in_process([tmp_path / "in"], out, settings=s, dry_run=True)
    (plan,) = rec.outcomes
    # --start 0.6 moves back to the keyframe at 0.5 s (frame 6); --end 1.5 keeps frames before 1.5 s (up to 17)
    assert plan.status == "planned" and plan.frames == 12 and plan.segments == 4 and plan.tiles == 12
    assert "no estimate" in plan.reason and not out.exists()
    rec, summary = run_in_process([tmp_path / "in"], out, settings=s, engine=tiny_engine)
    got = V.probe(out / "clip.mp4")
    assert got.frames == 12 and got.seconds(got.pts[0]) == 0.0
    info = V.probe(tmp_path / "in" / "clip.mp4")
    assert [p - got.pts[0] for p in got.pts] == [p - info.pts[6] for p in info.pts[6:18]]
    rec, _ = run_in_process([tmp_path / "in"], tmp_path / "o2", engine=tiny_engine,
                            settings=tiny_settings(tiny_models, max_frames=5))
    assert rec.outcomes[0].frames == 5 and V.probe(tmp_path / "o2" / "clip.mp4").frames == 5
    # the estimate of a dry run rests on what this folder's manifest says was made with the same settings
    rec, _ = run_in_process([tmp_path / "in"], out, settings=s, dry_run=True)
    assert rec.outcomes[0].status == "skipped"
    rec, _ = run_in_process([tmp_path / "in"], out, settings=tiny_settings(tiny_models, segment_seconds=0.25,
                                                                          start=0.6, end=1.5, skip_existing=False),
                            dry_run=True)
    assert "s/tile (the median of 1 earlier outputs in this folder)" in rec.outcomes[0].reason


def test_bad_videos_fail_alone_naming_the_reason(tmp_path, tiny_models, tiny_engine):
    src = tmp_path / "in"
    data = _clip(src, "good.mkv", frames=60, width=64, height=48, gop=12).read_bytes()  # as in test_video
    third = len(data) // 3
    (src / "corrupt.mkv").write_bytes(data[:third] + bytes(2000) + data[third + 2000:])
    (src / "trunc.mkv").write_bytes(data[: len(data) // 2])
    (src / "notvideo.mp4").write_bytes(b"\0" * 4000)
    make_audio(src / "tone.mp4")  # an audio file with a video extension
    imagegen.rgb(src / "still.png", 32, 32)
    (src / "good.mkv").unlink()
    # --end 2: two segments of the good frames' worth at most (the corruption is in the second), to keep it short
    rec, summary = run_in_process([src], tmp_path / "out", engine=tiny_engine,
                                  settings=tiny_settings(tiny_models, segment_seconds=1, end=2.0))
    assert rec.status("still.png")[0] == "done"  # the batch goes on
    status, why = rec.status("corrupt.mkv")
    assert status == "failed" and "segment" in why and " s (frame " in why, why
    assert rec.status("trunc.mkv") == ("failed", rec.status("trunc.mkv")[1])
    assert "truncated video: it ends at" in rec.status("trunc.mkv")[1]
    assert "cannot read as a video" in rec.status("notvideo.mp4")[1]
    assert "not an input: no video stream (audio)" in rec.status("tone.mp4")[1]
    big = _clip(tmp_path / "big", frames=3, width=64, height=48, audio=False)
    rec, _ = run_in_process([big], tmp_path / "out2", engine=tiny_engine,
                            settings=tiny_settings(tiny_models, max_pixels=2000))
    assert "64x48 = " in rec.outcomes[0].reason and "--max-pixels" in rec.outcomes[0].reason  # one frame counts
    assert not (tmp_path / "out" / "corrupt.mkv").exists() and not temps(tmp_path / "out")


def test_disk_full_while_joining_keeps_the_segments_and_stops(tmp_path, tiny_models, tiny_engine, monkeypatch):
    _clip(tmp_path / "in")
    out = tmp_path / "out"
    real_fsync = os.fsync

    def fsync(fd):  # the disk is full when the video's own file (not a segment's) is synced
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.endswith(TEMP_SUFFIX) and SEGMENTS_FOLDER not in target:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    settings = tiny_settings(tiny_models, segment_seconds=0.25)
    with monkeypatch.context() as mp:
        mp.setattr(os, "fsync", fsync)
        rec, summary = run_in_process([tmp_path / "in"], out, settings=settings, engine=tiny_engine)
    status, why = rec.status("clip.mp4")
    assert status == "failed" and "No space left on device" in why and "segments are kept" in why
    assert summary.stopped and "disk full" in summary.stopped
    assert not (out / "clip.mp4").exists() and not temps(out)
    kept = sorted((out / SEGMENTS_FOLDER).rglob("*.mp4"))
    assert len(kept) == 4
    # the next run joins the kept segments without computing any frame again
    rec, summary = run_in_process([tmp_path / "in"], out, settings=settings, engine=tiny_engine)
    assert rec.status("clip.mp4")[0] == "done" and rec.outcomes[0].tiles == 0
    assert V.probe(out / "clip.mp4").frames == FRAMES and not (out / SEGMENTS_FOLDER).exists()


def test_changed_settings_start_new_segments(tmp_path, tiny_models, tiny_engine):
    """Segments are reused only for the very configuration that made them: another --crf gets a new folder and the
    old one is removed."""
    from invsr_cli.run.discover import discover
    from invsr_cli.run.runner import run_fingerprint
    from invsr_cli.run.videos import plan_video
    from invsr_cli.settings.settings import FixedPolicy

    _clip(tmp_path / "in")
    out = tmp_path / "out"
    (job,) = discover([str(tmp_path / "in")], out).jobs
    plans = []
    for crf in (18, 30):
        policy = FixedPolicy(tiny_settings(tiny_models, segment_seconds=0.25, crf=crf))
        plan = plan_video(job, policy.run, out, run_fingerprint(policy, None))
        plan.folder.mkdir(parents=True)
        plan.files[0].write_bytes(b"x")
        plans.append(plan)
    assert plans[0].folder != plans[1].folder and not plans[0].folder.exists()
    again = plan_video(job, policy.run, out, run_fingerprint(policy, None))
    assert again.reused == {0} and again.missing() == [1, 2, 3]


@pytest.mark.slow
def test_sigkill_mid_video_resumes_with_only_the_missing_segments(tmp_path, tiny_flags):
    _clip(tmp_path / "in", frames=24)
    out = tmp_path / "out"
    args = ["upscale", tmp_path / "in", out, *tiny_flags, "--segment-seconds", "0.25", "--json"]
    proc = invsr_popen(args)
    seen = []  # the segments the killed run reported done
    for line in proc.stdout:
        rec = json.loads(line)
        if rec.get("type") == "segment":
            seen.append(rec["segment"])
            if len(seen) == 3:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "clip.mp4").exists()
    done = invsr(args, text=True)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in done.stdout.splitlines()]
    again = [x["segment"] for x in lines if x["type"] == "segment"]
    assert again and set(again).isdisjoint(seen) and len(again) <= 8 - len(seen)  # only the missing ones
    (video,) = [x for x in lines if x["type"] == "image"]
    assert video["status"] == "done" and video["frames"] == 24 and video["segments"] == 8
    assert V.probe(out / "clip.mp4").frames == 24 and not temps(out)
    assert len([p for p in out.iterdir() if p.suffix == ".mp4"]) == 1  # exactly one output per video


@pytest.mark.slow
def test_devices_spread_one_video_and_give_the_same_frames(tmp_path, tiny_models):
    """Two CPU workers share one video's segments; the decoded frames equal a single process's exactly (the same
    frames go into the same encoder with the same settings; x264 is deterministic for a given input, so the bytes
    are expected to match too, but what is asserted is the decoded frames, which is what the user sees)."""
    from tests.harness import model_flags

    _clip(tmp_path / "in")
    flags = ["--segment-seconds", "0.25"]
    one = invsr(["upscale", tmp_path / "in", tmp_path / "one", *model_flags(tiny_models), *flags, "--json"],
                text=True)
    two = invsr(["upscale", tmp_path / "in", tmp_path / "two", *model_flags(tiny_models, device=None),
                 "--devices", "cpu,cpu", *flags, "--json"], text=True)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    a, b = _frames(tmp_path / "one" / "clip.mp4"), _frames(tmp_path / "two" / "clip.mp4")
    assert len(a) == len(b) == FRAMES
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    segs = [json.loads(x) for x in two.stdout.splitlines() if json.loads(x)["type"] == "segment"]
    assert sorted(s["segment"] for s in segs) == [0, 1, 2, 3]


def test_collect_reporter_hears_segments(tmp_path, tiny_models, tiny_engine):
    class Segments(Collect):
        def __init__(self):
            super().__init__()
            self.segments = []

        def segment(self, o, video, count, progress):
            self.segments.append((o.segment, count, progress["frames_done"], progress["video_frames"]))

    _clip(tmp_path / "in", audio=False)
    rec = Segments()
    run_in_process([tmp_path / "in"], tmp_path / "out", reporter=rec, engine=tiny_engine,
                   settings=tiny_settings(tiny_models, segment_seconds=0.5))
    assert rec.segments == [(0, 2, 6, 12), (1, 2, 12, 12)]


# A child process runs a whole `invsr upscale` of one video through the driver (probe, segments, process_images,
# encode, remux) with an engine that upscales by repeating pixels (an Engine as work.process defines it), so the
# peak it reports is the pipeline's, not a model's. VmHWM: this process's own peak (ru_maxrss would include the
# parent's size at fork, which exec keeps).
RSS_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from invsr_cli.run.discover import discover
    from invsr_cli.run.runner import run_batch
    from invsr_cli.settings.settings import resolve_settings
    from invsr_cli.work.report import Reporter

    class Repeat:
        device = torch.device("cpu")
        identity = {"engine": "repeat x4"}

        def upscale(self, lr, **kw):
            return lr.repeat_interleave(4, -1).repeat_interleave(4, -2)

    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    settings = resolve_settings(None, {"device": "cpu", "tile": 128, "segment_seconds": 2.0})
    summary = run_batch(discover([str(src)], out).jobs, settings, output_dir=out, engine=Repeat(),
                        handle_signals=False, reporter=Reporter())
    assert summary.processed == 1, summary.line()
    print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0])
""")


def peak_rss_kib(folder: Path, frames: int, width: int = 96, height: int = 72) -> int:
    """Peak RSS (KiB) of a child process upscaling a ``frames``-frame video through the whole pipeline."""
    src = make_video(folder / f"in{frames}.mkv", frames=frames, width=width, height=height, gop=24)
    out = folder / f"o{frames}"
    done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(src), str(out)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert V.probe(out / src.name).frames == frames
    return int(done.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_peak_memory_does_not_grow_with_length(tmp_path):
    short, long = peak_rss_kib(tmp_path, 60), peak_rss_kib(tmp_path, 600)
    # 600 upscaled frames (384x288 RGB) held at once would be ~200 MB as uint8 (~800 MB as the float32 they leave
    # the blend in); streaming keeps the peak flat. Measured here: +17..19 MB from 60 to 600 frames, +5..7 MB more
    # to 1800 (the growth levels off: malloc arenas of the encoder's threads, per-segment records), so 40 MB is
    # generous and still far below what holding the frames would cost.
    assert long - short < 40 * 1024, (short, long)
    print(f"peak RSS: 60 frames {short} KiB, 600 frames {long} KiB")


@pytest.mark.parametrize("finish", [False, True])
def test_a_stop_mid_segment_leaves_no_file_and_ends(tmp_path, tiny_models, tiny_engine, finish):
    """A stop (a signal; `invsr watch` finishes what is in flight) in the middle of a segment ends the processing:
    the segment is abandoned, its file never appears and no outcome claims it."""
    from invsr_cli.run.discover import discover
    from invsr_cli.run.videos import plan_video
    from invsr_cli.settings.settings import FixedPolicy
    from invsr_cli.work.process import process_images

    _clip(tmp_path / "in", audio=False)
    policy = FixedPolicy(tiny_settings(tiny_models, segment_seconds=100))
    (job,) = discover([str(tmp_path / "in")], tmp_path / "out").jobs
    plan = plan_video(job, policy.run, tmp_path / "out", "test")
    (task,) = plan.tasks(policy.run)
    calls = []

    class StopAfterTwoFrames:
        device = tiny_engine.device

        def upscale(self, lr, **kw):
            calls.append(1)
            return tiny_engine.upscale(lr, **kw)

    outcomes = list(process_images([task], policy, StopAfterTwoFrames(), should_stop=lambda: len(calls) >= 2,
                                   finish_in_flight=finish))
    assert outcomes == [] and 2 <= len(calls) < FRAMES
    assert not plan.files[0].exists() and not temps(tmp_path / "out")


def test_shards_share_one_video_and_the_last_joins_it(tmp_path, tiny_models, tiny_engine):
    """--shard spreads a video's segments (by "<rel>#<segment>": here segment 3 to shard 0, the rest to shard 1);
    a shard that finishes before the others says so (skipped), the last one finds every segment and joins the
    video. A shard cleans only its own segments' temporary files (others may be writing theirs)."""
    from invsr_cli.run.discover import discover
    from invsr_cli.run.runner import run_fingerprint
    from invsr_cli.run.shard import Shard, shard_of
    from invsr_cli.run.videos import plan_video
    from invsr_cli.settings.settings import FixedPolicy

    assert [shard_of(f"clip.mp4#{i}", 2) for i in range(4)] == [1, 1, 1, 0]
    _clip(tmp_path / "in")
    out = tmp_path / "out"
    settings = tiny_settings(tiny_models, segment_seconds=0.25)
    (job,) = discover([str(tmp_path / "in")], out).jobs
    policy = FixedPolicy(settings)
    folder = plan_video(job, policy.run, out, run_fingerprint(policy, tiny_engine.identity)).folder
    folder.mkdir(parents=True)
    mine, other = (folder / f".0000{i}.mp4.0badf00d{TEMP_SUFFIX}" for i in (3, 0))  # what kills would leave
    mine.write_bytes(b"half")
    other.write_bytes(b"half")
    first, _ = run_in_process([tmp_path / "in"], out, settings=settings, engine=tiny_engine, shard=Shard(0, 2))
    status, why = first.status("clip.mp4")
    assert status == "skipped" and "3 of its 4 segments are other shards'" in why
    assert not (out / "clip.mp4").exists() and (folder / "00003.mp4").is_file()
    assert not mine.exists() and other.exists()
    last, summary = run_in_process([tmp_path / "in"], out, settings=settings, engine=tiny_engine, shard=Shard(1, 2))
    assert last.status("clip.mp4")[0] == "done" and last.outcomes[0].tiles == 9  # its 3 segments of 3 frames
    assert V.probe(out / "clip.mp4").pts == V.probe(tmp_path / "in" / "clip.mp4").pts
    assert sorted(r["segment"] for r in _segment_records(out)) == [0, 1, 2, 3]  # across the shards' manifests
    assert not folder.exists()


def test_variable_frame_rate_kept_and_an_unknown_encoder_refused_before_work(tmp_path, tiny_models, tiny_engine):
    from fractions import Fraction

    from invsr_cli.base.errors import ConfigError

    pts = [0, 40, 120, 130, 300, 310, 500, 900]  # in 1/1000 s: gaps of 10 to 400 ms
    src = _clip(tmp_path / "in", frames=len(pts), pts=pts, time_base=Fraction(1, 1000), gop=4, audio=False)
    out = tmp_path / "out"
    rec, summary = run_in_process([src], out, settings=tiny_settings(tiny_models, segment_seconds=0.2),
                                  engine=tiny_engine)
    assert summary.processed == 1 and rec.outcomes[0].segments == 2
    got = V.probe(out / "clip.mp4")
    assert [got.seconds(p) for p in got.pts] == pytest.approx([p / 1000 for p in pts], abs=1e-6)
    with pytest.raises(ConfigError, match="--video-codec: the bundled FFmpeg has no encoder 'nope'"):
        run_in_process([src], tmp_path / "o2", settings=tiny_settings(tiny_models, video_codec="nope"),
                       engine=tiny_engine)
    assert not (tmp_path / "o2").exists()


def test_a_video_flag_makes_videos_stale_not_images(tmp_path, tiny_models, tiny_engine):
    """`--crf` changes a video's output, not an image's: a second run with another one recomputes the video only."""
    _clip(tmp_path / "in", audio=False)
    imagegen.rgb(tmp_path / "in" / "still.png", 32, 32)
    out = tmp_path / "out"
    run_in_process([tmp_path / "in"], out, settings=tiny_settings(tiny_models, segment_seconds=100), engine=tiny_engine)
    rec, _ = run_in_process([tmp_path / "in"], out, engine=tiny_engine,
                            settings=tiny_settings(tiny_models, segment_seconds=100, crf=30))
    assert rec.status("still.png") == ("skipped", "up to date")
    assert rec.status("clip.mp4")[0] == "done"
    assert any("clip.mp4 is stale" in w for w in rec.warnings)
    rec, _ = run_in_process([tmp_path / "in"], out, engine=tiny_engine,  # and then it is up to date itself
                            settings=tiny_settings(tiny_models, segment_seconds=100, crf=30))
    assert rec.status("clip.mp4") == ("skipped", "up to date")
