"""Video reading and writing (invsr_cli.imaging.video) with small videos made here with PyAV."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from invsr_cli.base.errors import OutputError, VideoReadError  # noqa: E402
from invsr_cli.imaging import video as V  # noqa: E402
from tests.videogen import make_audio, make_video  # noqa: E402


def _upscale4(info: V.VideoInfo, segment: V.Segment | None):
    for fr in V.iter_frames(info, segment):
        yield np.repeat(np.repeat(fr.rgb, 4, 0), 4, 1), fr.pts


def _transcode(src: Path, out: Path, segment_seconds: float = 1.0, **plan) -> tuple[V.VideoInfo, list[Path]]:
    info = V.probe(src)
    encoder = V.choose_encoder(info.codec, suffix=out.suffix)
    files = []
    for seg in V.plan_segments(info, segment_seconds, **plan):
        f = out.with_name(f"{out.stem}.seg{seg.index}{V.segment_suffix(encoder)}")
        assert V.encode_segment(f, _upscale4(info, seg), info, encoder=encoder) == seg.frames
        files.append(f)
    V.remux(out, files, info, provenance={"model": "tiny"})
    return info, files


def _packets(path: Path, kind: str) -> list[bytes]:
    with av.open(str(path)) as c:
        s = [x for x in c.streams if x.type == kind][0]
        return [bytes(p) for p in c.demux(s) if p.size]


def test_output_keeps_frames_timestamps_audio_rotation_metadata(tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=36, rotation=90, metadata={"title": "hello"})
    out = tmp_path / "out.mp4"
    info, files = _transcode(src, out)
    assert len(files) == 3  # 3 s at 1 s segments, keyframes every second
    got = V.probe(out)
    assert got.frames == info.frames == 36
    assert [got.seconds(p) for p in got.pts] == pytest.approx([info.seconds(p) for p in info.pts], abs=1e-6)
    assert abs(got.duration - info.duration) <= 1 / 12
    assert (got.width, got.height) == (4 * info.width, 4 * info.height)
    assert got.rotation == 90
    assert got.codec == "h264"
    assert _packets(out, "audio") == _packets(src, "audio")  # copied, not re-encoded
    assert got.metadata["title"] == "hello"
    assert json.loads(got.metadata[V.PROVENANCE_KEY]) == {"model": "tiny"}
    # the decoded frames are the upscaled input (lossy codec: compare loosely, against a different video strictly)
    want = [rgb for rgb, _ in _upscale4(info, None)]
    frames = [f.rgb for f in V.iter_frames(got)]
    err = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, want, strict=True)]
    assert max(err) < 6
    assert np.abs(frames[0].astype(int) - want[20].astype(int)).mean() > 2 * max(err)


def test_variable_frame_rate_timestamps_kept(tmp_path):
    tb = Fraction(1, 1000)
    stamps = [0, 40, 80, 200, 240, 500, 540, 580, 1000, 1033, 1066, 1400, 1900, 1940, 2300]
    src = make_video(tmp_path / "vfr.mkv", pts=stamps, time_base=tb, gop=5, audio=True)
    out = tmp_path / "vfr_out.mkv"
    info, _ = _transcode(src, out, segment_seconds=0.5)
    assert list(info.pts) == stamps
    assert list(V.probe(out).pts) == stamps


def test_segments_start_on_keyframes_and_cover_every_frame(tmp_path):
    info = V.probe(make_video(tmp_path / "in.mkv", frames=60, gop=7, audio=False))
    assert info.keyframes == (0, 7, 14, 21, 28, 35, 42, 49, 56)
    segs = V.plan_segments(info, 1.0)  # 12 fps: a cut at the first keyframe >= 1 s after the segment's start
    assert [s.first for s in segs] == [0, 14, 28, 42, 56]
    assert sum(s.frames for s in segs) == 60
    assert all(s.first in info.keyframes for s in segs)
    assert segs[-1].end_pts is None and segs[0].end_pts == info.pts[14]
    # start moves back to a keyframe; end and max_frames cut
    part = V.plan_segments(info, 100.0, start=1.5, end=3.0)
    assert part[0].first == 14 and part[-1].last == 35
    assert sum(s.frames for s in V.plan_segments(info, 1.0, max_frames=20)) == 20


def test_segment_decoding_equals_whole_decoding(tmp_path):
    info = V.probe(make_video(tmp_path / "in.mp4", frames=40, gop=9, audio=False))
    whole = list(V.iter_frames(info))
    parts = [f for s in V.plan_segments(info, 0.5) for f in V.iter_frames(info, s)]
    assert [f.pts for f in parts] == [f.pts for f in whole] == list(info.pts)
    assert [f.index for f in parts] == list(range(40))
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(parts, whole, strict=True))


def test_truncated_and_corrupt_inputs_name_time_and_frame(tmp_path):
    data = make_video(tmp_path / "in.mkv", frames=60).read_bytes()
    trunc = tmp_path / "trunc.mkv"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError, match=r"trunc\.mkv: truncated video: it ends at [\d.]+ s \(frame \d+\)"):
        V.probe(trunc)
    bad = tmp_path / "corrupt.mkv"
    third = len(data) // 3
    bad.write_bytes(data[:third] + bytes(2000) + data[third + 2000:])
    with pytest.raises(VideoReadError, match=r"corrupt\.mkv: .* at [\d.]+ s \(frame \d+\)"):
        for _ in V.iter_frames(V.probe(bad)):
            pass
    mp4 = make_video(tmp_path / "in.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(mp4[: len(mp4) // 2])
    with pytest.raises(VideoReadError, match=r"cut\.mp4: cannot read as a video"):
        V.probe(tmp_path / "cut.mp4")


def test_audio_only_is_not_an_input(tmp_path):
    path = make_audio(tmp_path / "tone.m4a")
    with pytest.raises(V.NotAVideoError, match=r"tone\.m4a: not an input: no video stream \(audio\)"):
        V.probe(path)


def test_failed_remux_leaves_no_output_and_keeps_segments(tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=24)
    out = tmp_path / "out.mp4"
    info, files = _transcode(src, out)
    out.unlink()
    files[1].write_bytes(b"not a video")
    with pytest.raises((OutputError, VideoReadError, av.error.FFmpegError)):
        V.remux(out, files, info)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.mp4", *[f.name for f in files]])


def test_encoder_choice():
    assert V.choose_encoder("h264") == "libx264"
    assert V.choose_encoder("hevc") == "libx265"
    assert V.choose_encoder("prores") == V.DEFAULT_ENCODER  # no ProRes encoder chosen for the family: default
    assert V.choose_encoder("h264", "vp9") == "libvpx-vp9"
    with pytest.raises(Exception, match="--video-codec"):
        V.choose_encoder("h264", "no-such-encoder")


@pytest.mark.slow
def test_missing_extra_names_the_pip_line(tmp_path):
    code = ("import sys; sys.modules['av'] = None\n"
            "from invsr_cli.imaging import video as V\n"
            "try:\n    V.probe('x.mp4')\nexcept V.VideoReadError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert "pip install 'invsr-cli[video]'" in done.stdout


def test_image_reader_names_a_video_as_one(tmp_path):
    from invsr_cli.base.errors import ImageReadError
    from invsr_cli.imaging.decode import read_image

    clip = make_video(tmp_path / "clip.mp4", frames=6, audio=False)
    with pytest.raises(ImageReadError, match=r"clip\.mp4: a video, not an image: `invsr upscale` takes videos"):
        read_image(clip)


@pytest.mark.parametrize(("name", "codec", "family", "audio"),
                         [("in.webm", "libvpx-vp9", "vp9", False), ("in.mkv", "libx265", "hevc", True)])
def test_codec_family_and_timestamps_kept_in_other_containers(tmp_path, name, codec, family, audio):
    src = make_video(tmp_path / name, frames=24, codec=codec, audio=audio, gop=12)
    out = tmp_path / f"out{Path(name).suffix}"
    info, files = _transcode(src, out)
    got = V.probe(out)
    assert (got.codec, got.frames, got.pts) == (family, 24, info.pts)
    assert len(files) == 2
    if audio:
        assert _packets(out, "audio") == _packets(src, "audio")
