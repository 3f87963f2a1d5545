"""Probe each input once (issue 16, item 3): the driver reads each header once, carries it in the task, and
every step before decoding (the size refusal, skip-if-larger, the dry run, largest-first, the read) uses it."""

from __future__ import annotations

import os
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from PIL import Image

from invsr_cli.run.discover import discover
from invsr_cli.run.runner import run_batch
from invsr_cli.settings.preset_files import load_policy
from invsr_cli.work.report import Reporter
from tests import imagegen
from tests.test_run_image_settings import NearestEngine


def _inputs(folder: Path) -> list[str]:
    folder.mkdir()
    imagegen.rgb(folder / "still.png", 40, 24, seed=1)
    imagegen.exif_rotated_jpeg(folder / "rotated.jpg", 32, 16)  # shown 16x32
    frames = [Image.fromarray(imagegen._pattern(24, 16, s)) for s in (1, 2)]
    frames[0].save(folder / "moving.gif", save_all=True, append_images=frames[1:], duration=[50, 60], loop=0)
    return ["still.png", "rotated.jpg", "moving.gif"]


class _Opens:
    """Counts Pillow header opens per file name, and notes how many had happened when each file's decode began."""

    def __init__(self, monkeypatch) -> None:
        import invsr_cli.imaging.animation
        import invsr_cli.imaging.decode

        self.opens: Counter[str] = Counter()
        self.at_decode: dict[str, int] = {}
        real_open = PIL.Image.open

        def counting_open(fp, *args, **kw):
            self.opens[os.path.basename(str(getattr(fp, "name", fp)))] += 1
            return real_open(fp, *args, **kw)

        monkeypatch.setattr(PIL.Image, "open", counting_open)
        for module, name in ((invsr_cli.imaging.decode, "read_image"), (invsr_cli.imaging.animation, "read_animation")):
            monkeypatch.setattr(module, name, self._noting(getattr(module, name)))

    def _noting(self, decode):
        def wrapped(path, *args, **kw):
            name = os.path.basename(str(path))
            self.at_decode.setdefault(name, self.opens[name])
            return decode(path, *args, **kw)

        return wrapped


@pytest.mark.parametrize("flags", [
    {},
    {"skip_if_larger": 500, "max_input_side": 20, "long_side": 64},  # every header-reading step is on
    {"long_side": 150, "passes": 2, "tile": 16, "overlap": 4},  # the size refusal reads headers, two passes
])
def test_each_input_header_is_opened_once_before_it_is_decoded(tmp_path, monkeypatch, flags):
    names = _inputs(tmp_path / "in")
    policy = load_policy(None, flags)
    jobs = discover([str(tmp_path / "in")], tmp_path / "out").jobs
    opens = _Opens(monkeypatch)
    summary = run_batch(jobs, policy, output_dir=tmp_path / "out", reporter=Reporter(), engine=NearestEngine(),
                        handle_signals=False)
    assert summary.processed == 3, [o.reason for o in summary.outcomes]
    assert opens.at_decode == {n: 1 for n in names}


def test_the_dry_run_opens_each_header_once_and_decodes_nothing(tmp_path, monkeypatch):
    names = _inputs(tmp_path / "in")
    policy = load_policy(None, {"skip_if_larger": 500, "max_input_side": 20, "long_side": 64})
    jobs = discover([str(tmp_path / "in")], tmp_path / "out").jobs
    opens = _Opens(monkeypatch)
    summary = run_batch(jobs, policy, output_dir=tmp_path / "out", reporter=Reporter(), dry_run=True)
    assert summary.planned == 3
    assert opens.opens == Counter({n: 1 for n in names}) and opens.at_decode == {}


@pytest.mark.parametrize("flags", [{"tile": 16, "overlap": 4}, {"tile": 32, "overlap": 8, "max_input_side": 30},
                                   {"long_side": 300, "passes": 2, "tile": 16, "overlap": 6}])
def test_the_dry_run_plans_what_processing_does(tmp_path, flags):
    """Sizes, passes and tiles the dry run prints are those the real run then reports."""
    _inputs(tmp_path / "in")
    policy = load_policy(None, flags)
    jobs = discover([str(tmp_path / "in")], tmp_path / "out").jobs
    keys = ("width", "height", "tiles", "tile", "overlap", "passes", "frames")
    planned = run_batch(jobs, policy, output_dir=tmp_path / "out", reporter=Reporter(), dry_run=True)
    done = run_batch(jobs, policy, output_dir=tmp_path / "out", reporter=Reporter(), engine=NearestEngine(),
                     handle_signals=False)
    assert [o.status for o in planned.outcomes] == ["planned"] * 3 and done.processed == 3
    by_input = {o.input: [getattr(o, k) for k in keys] for o in done.outcomes}
    assert {o.input: [getattr(o, k) for k in keys] for o in planned.outcomes} == by_input


def _png_with_exif_after_pixels(path: Path, w: int, h: int, orientation: int) -> Path:
    """A PNG whose eXIf chunk follows IDAT (allowed by the spec): Pillow sees it only when it decodes."""
    imagegen.rgb(path, w, h, seed=5)
    data = path.read_bytes()
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = exif.tobytes()
    if body.startswith(b"Exif\x00\x00"):
        body = body[6:]
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    end = data.rindex(b"IEND") - 4
    path.write_bytes(data[:end] + chunk + data[end:])
    return path


def test_the_header_probe_finds_a_png_orientation_after_the_pixels_without_decoding(tmp_path, monkeypatch):
    from invsr_cli.imaging.decode import read_image
    from invsr_cli.work.inputs import probe_input

    path = _png_with_exif_after_pixels(tmp_path / "late.png", 40, 24, 6)
    shown = read_image(path)
    assert (shown.width, shown.height) == (24, 40)  # the decoder applies it

    def no_decoding(self):
        raise AssertionError("the probe decoded the pixels")

    monkeypatch.setattr(PIL.PngImagePlugin.PngImageFile, "load", no_decoding)
    info = probe_input(path)
    assert (info.width, info.height, info.orientation) == (24, 40, 6)
    imagegen.rgb(tmp_path / "plain.png", 40, 24)
    assert (probe_input(tmp_path / "plain.png").width, probe_input(tmp_path / "plain.png").orientation) == (40, 1)


def test_devices_order_largest_first_from_the_probed_headers(tmp_path, monkeypatch):
    """--devices hands the largest images out first, by the InputInfo in each task: it opens no header itself."""
    import invsr_cli.imaging.decode
    from invsr_cli.run.executors.devices import _largest_first
    from invsr_cli.work.inputs import probe_inputs
    from invsr_cli.work.process import ImageTask

    (tmp_path / "in").mkdir()
    for name, w in (("a.png", 20), ("b.png", 60), ("c.png", 40)):
        Image.fromarray(np.full((20, w, 3), 90, np.uint8)).save(tmp_path / "in" / name)
    (tmp_path / "in" / "d.png").write_bytes(b"not an image")
    jobs = discover([str(tmp_path / "in")], tmp_path / "out").jobs
    tasks = [ImageTask(job, i, info=info) for i, (job, info) in enumerate(zip(jobs, probe_inputs(
        [j.input for j in jobs]), strict=True))]
    assert tasks[3].info is None  # unreadable: its worker reports why

    def no_probe(*a, **k):
        raise AssertionError("probed again")

    monkeypatch.setattr(invsr_cli.imaging.decode, "probe_image", no_probe)
    order = [Path(i.task.job.input).name for i in _largest_first(tasks, max_pixels=None)]
    assert order == ["b.png", "c.png", "a.png", "d.png"]
    assert [Path(i.task.job.input).name for i in _largest_first(tasks, max_pixels=1000)][:2] == ["c.png", "a.png"]
