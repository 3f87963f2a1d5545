"""The unit of work (`process_images`) and the sink, in process, on the tiny engine."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from invsr_cli.base.errors import DiskFullError
from invsr_cli.run.discover import discover
from invsr_cli.settings.preset_files import load_policy
from invsr_cli.settings.settings import FixedPolicy, resolve_settings
from invsr_cli.work.process import ImageTask, PreparedImage, process_images
from invsr_cli.work.report import Reporter
from invsr_cli.work.sink import ImageSink
from tests import imagegen


def _tasks(folder: Path, names, out: Path) -> list[ImageTask]:
    found = discover([str(folder / n) for n in names], out)
    return [ImageTask(job, i) for i, job in enumerate(found.jobs)]


def _noisy(path: Path, seed: int) -> Path:
    imagegen.rgb(path, 40, 32, seed=seed)
    arr = np.asarray(Image.open(path)).astype(float) + np.random.default_rng(seed).normal(0, 30, (32, 40, 3))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
    return path


def test_each_outcome_carries_the_settings_its_image_was_made_with(tmp_path, tiny_engine):
    """auto: a noisy and a clean image get different presets; each outcome holds that preset's own settings
    object, not one looked up again by name."""
    _noisy(tmp_path / "noisy.png", 1)
    Image.fromarray(np.full((32, 40, 3), 120, np.uint8)).save(tmp_path / "flat.png")
    policy = load_policy("auto", {"tile": 32, "overlap": 8, "posterior": "mean", "device": "cpu"})
    tasks = _tasks(tmp_path, ["noisy.png", "flat.png"], tmp_path / "out")
    outcomes = {Path(o.input).name: o for o in process_images(tasks, policy, tiny_engine)}
    assert {n: o.status for n, o in outcomes.items()} == {"noisy.png": "done", "flat.png": "done"}
    assert outcomes["noisy.png"].preset == "noisy" and outcomes["flat.png"].preset == "default"
    for o in outcomes.values():
        assert o.settings.image is policy.choices[o.preset] and o.settings.run is policy.run
        assert o.timesteps == o.settings.timesteps and o.rule and o.degradation is not None
        assert (o.tile, o.overlap) == (32, 8) and sum(o.batch_sizes) >= 1


def test_tasks_with_pixels_in_memory_and_a_custom_write_touch_no_file(tmp_path, tiny_engine):
    """What `invsr bench` does: decoded pixels in, results kept, nothing read or written on disk."""
    from invsr_cli.imaging.decode import read_image

    imagegen.rgb(tmp_path / "a.png", 40, 24, seed=3)
    loaded = read_image(tmp_path / "a.png")
    (job,) = discover([str(tmp_path / "a.png")], tmp_path / "out").jobs
    (tmp_path / "a.png").unlink()  # proves the pixels given are used, not the file
    kept = {}

    def keep(img, rgb, models):
        kept[img.task.index] = rgb
        return rgb.shape[1], rgb.shape[0]

    settings = resolve_settings(None, {"tile": 32, "overlap": 8, "posterior": "mean"})
    (o,) = process_images([ImageTask(job, 0, loaded)], FixedPolicy(settings), tiny_engine, write=keep)
    assert o.status == "done" and (o.width, o.height) == (160, 96)
    assert kept[0].shape == (96, 160, 3) and np.isfinite(kept[0]).all()
    assert not (tmp_path / "out").exists()


def test_should_stop_ends_after_the_writes_in_flight(tmp_path, tiny_engine):
    names = [f"{i}.png" for i in range(5)]
    for i, n in enumerate(names):
        imagegen.rgb(tmp_path / n, 32, 24, seed=i)
    settings = resolve_settings(None, {"tile": 32, "overlap": 8, "batch_size": 1})
    done = []
    processing = process_images(_tasks(tmp_path, names, tmp_path / "out"), FixedPolicy(settings), tiny_engine,
                                should_stop=lambda: len(done) >= 1)
    for o in processing:
        done.append(o)
    assert 1 <= len(done) < len(names) and all(o.status == "done" for o in done)
    assert processing.stopped is None  # a requested stop is not a failure
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(Path(o.output).name for o in done)


def test_disk_full_marks_every_task_never_attempted(tmp_path, tiny_engine):
    names = [f"{i}.png" for i in range(6)]
    for i, n in enumerate(names):
        imagegen.rgb(tmp_path / n, 32, 24, seed=i)

    def full(img, rgb, models):
        raise DiskFullError(f"{img.job.output}: No space left on device", errno.ENOSPC)

    settings = resolve_settings(None, {"tile": 32, "overlap": 8, "batch_size": 1})
    processing = process_images(_tasks(tmp_path, names, tmp_path / "out"), FixedPolicy(settings), tiny_engine,
                                write=full)
    outcomes = list(processing)
    assert processing.stopped and "disk full" in processing.stopped
    assert sorted(Path(o.input).name for o in outcomes) == names  # every task has exactly one outcome
    assert all(o.status == "failed" for o in outcomes)
    tried = [o for o in outcomes if "No space left" in o.reason]
    never = [o for o in outcomes if o.reason.startswith("not attempted: disk full")]
    assert tried and never and len(tried) + len(never) == len(names)


def _finished_image(tmp_path, hr, color_fix="none") -> PreparedImage:
    from invsr_cli.imaging.decode import read_image
    from invsr_cli.settings.settings import ImageChoice

    imagegen.rgb(tmp_path / "a.png", 16, 16, seed=1)
    (job,) = discover([str(tmp_path / "a.png")], tmp_path / "out").jobs
    s = resolve_settings(None, {"tile": 16, "overlap": 0, "color_fix": color_fix})
    img = PreparedImage(ImageTask(job), ImageChoice(s.image), read_image(job.input), 0.0, run=s.run)
    img.replan(16)

    class Done:
        def result(self):
            return hr

    img.accs[0] = Done()
    return img


@pytest.mark.parametrize(("value", "reason"), [(float("nan"), "NaN/inf"), (0.5, "blank")])
def test_sink_refuses_bad_outputs_and_writes_nothing(tmp_path, value, reason):
    hr = torch.rand(3, 64, 64)
    hr[:, 10, 10] = value
    if reason == "blank":
        hr[:] = value
    sink = ImageSink(torch.device("cpu"))
    (o,) = list(sink.finish(_finished_image(tmp_path, hr)))
    sink.close()
    assert o.status == "failed" and reason in o.reason and not (tmp_path / "out").exists()


def test_sink_writes_in_the_background_and_reports_done(tmp_path):
    sink = ImageSink(torch.device("cpu"))
    img = _finished_image(tmp_path, torch.rand(3, 64, 64), color_fix="adain")
    assert list(sink.finish(img)) == []  # queued, not yet collected
    (o,) = list(sink.drain())
    sink.close()
    assert o.status == "done" and (o.width, o.height) == (64, 64) and o.settings.color_fix == "adain"
    assert Image.open(tmp_path / "out" / "a.png").size == (64, 64)


def test_reporter_hears_tiles_planned_and_done(tmp_path, tiny_engine):
    class Count(Reporter):
        planned = done = 0

        def tiles_planned(self, n):
            self.planned += n

        def tiles_done(self, n):
            self.done += n

    imagegen.rgb(tmp_path / "a.png", 64, 40, seed=2)
    settings = resolve_settings(None, {"tile": 32, "overlap": 8})
    rep = Count()
    (o,) = process_images(_tasks(tmp_path, ["a.png"], tmp_path / "out"), FixedPolicy(settings), tiny_engine,
                          reporter=rep)
    assert o.tiles > 1 and rep.planned == rep.done == o.tiles


@pytest.mark.parametrize("finish", [False, True])
def test_a_stop_abandons_or_finishes_the_image_in_flight(tmp_path, tiny_engine, finish):
    """The stop is asked for during the first engine call, when image 0 has 1 of its 4 tiles computed. A batch run
    abandons it (nothing written, nothing reported); a service (`invsr watch`) finishes it and reads nothing new."""
    names = [f"{i}.png" for i in range(4)]
    for i, n in enumerate(names):
        imagegen.rgb(tmp_path / n, 48, 40, seed=i)
    stop = []

    class StopDuringFirstBatch:
        device = tiny_engine.device

        def upscale(self, lr, **kw):
            stop.append(True)
            return tiny_engine.upscale(lr, **kw)

    settings = resolve_settings(None, {"tile": 32, "overlap": 8, "batch_size": 1})
    outcomes = list(process_images(_tasks(tmp_path, names, tmp_path / "out"), FixedPolicy(settings),
                                   StopDuringFirstBatch(), should_stop=lambda: bool(stop), finish_in_flight=finish))
    if finish:
        assert [Path(o.input).name for o in outcomes] == ["0.png"] and outcomes[0].status == "done"
        assert outcomes[0].tiles == 4 and len(stop) == 4
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png"]
    else:
        assert outcomes == [] and len(stop) == 1 and not (tmp_path / "out").exists()


class _CountingReporter(Reporter):
    def __init__(self) -> None:
        self.done = 0

    def tiles_done(self, n: int) -> None:
        self.done += n


def test_an_output_the_format_cannot_write_fails_before_any_compute(tmp_path, tiny_engine):
    """Issue 19, item 1: what the writer would refuse (here --lossless for a JPEG kept as JPEG by --format auto;
    a TIFF with camera EXIF used to be one) fails the image when it is read, not after its tiles ran."""
    imagegen.rgb(tmp_path / "a.jpg", 40, 24, seed=3)
    imagegen.rgb(tmp_path / "b.png", 40, 24, seed=4)
    policy = FixedPolicy(resolve_settings(None, {"tile": 32, "overlap": 8, "device": "cpu", "lossless": True}))
    reporter = _CountingReporter()
    outcomes = {Path(o.input).name: o for o in process_images(_tasks(tmp_path, ["a.jpg", "b.png"], tmp_path / "out"),
                                                              policy, tiny_engine, reporter=reporter)}
    assert outcomes["a.jpg"].status == "failed" and "jpg has no lossless mode" in outcomes["a.jpg"].reason
    assert outcomes["b.png"].status == "done"
    assert reporter.done == outcomes["b.png"].tiles  # only b's tiles ran: a failed before its compute
    assert not (tmp_path / "out" / "a.jpg").exists()


class _FrameReporter(Reporter):
    def __init__(self) -> None:
        self.frames: list[tuple[str, int, int]] = []

    def frame_done(self, path: str, done: int, frames: int) -> None:
        self.frames.append((Path(path).name, done, frames))


def test_tiny_animation_frames_cost_their_own_pixels_and_depend_on_nothing_else(tmp_path, tiny_engine):
    """Issue 19, item 2: frames of 8x8 px were each padded to a whole 128 tile. Now each is one 16 px tile, and
    its result is bit for bit that frame upscaled alone as a still with --tile 16 (the same plan, the same seed):
    it depends on its own pixels only. Each frame's end is reported as it comes."""
    from invsr_cli.imaging.animation import read_animation
    from invsr_cli.imaging.decode import read_image

    rng = np.random.default_rng(4)
    frames = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(5)]
    frames[0].save(tmp_path / "tiny.png", save_all=True, append_images=frames[1:], duration=40, loop=0)
    for k, f in enumerate(frames):
        f.save(tmp_path / f"still{k}.png")
    kept = {}

    def keep(img, rgb, models):
        kept[img.job.input.name] = rgb
        return 32, 32

    anim = process_images(_tasks(tmp_path, ["tiny.png"], tmp_path / "out"),
                          FixedPolicy(resolve_settings(None, {"posterior": "sample", "seed": 3})), tiny_engine,
                          write=keep, reporter=(frames_seen := _FrameReporter()))
    (o,) = list(anim)
    assert o.status == "done" and o.frames == 5 and o.tile == 16 and o.tiles == 5  # not five 128 px tiles
    assert frames_seen.frames == [("tiny.png", k, 5) for k in range(1, 6)]
    assert read_animation(tmp_path / "tiny.png").n_frames == 5
    still_settings = FixedPolicy(resolve_settings(None, {"tile": 16, "overlap": 0, "posterior": "sample", "seed": 3}))
    for k in range(5):
        loaded = read_image(tmp_path / f"still{k}.png")
        (job,) = discover([str(tmp_path / f"still{k}.png")], tmp_path / "out").jobs
        (s,) = process_images([ImageTask(job, 0, loaded)], still_settings, tiny_engine, write=keep)
        assert s.status == "done" and s.tile == 16
        np.testing.assert_array_equal(kept["tiny.png"][k], kept[f"still{k}.png"], err_msg=f"frame {k}")


def test_images_sharing_batches_each_report_their_share_of_the_time(tmp_path, tiny_engine):
    """Issue 19, item 7: when tiles of several images share batches, each image reported the shared batches'
    time as its own, so the images' seconds added up to about three times the run. Now each gets its share (by
    its tiles in each batch): the sum stays within the wall time of the whole call."""
    import time

    names = [f"{i}.png" for i in range(3)]
    for i, n in enumerate(names):
        imagegen.rgb(tmp_path / n, 48, 48, seed=i)  # 4 tiles of 32 each: 12 tiles, in batches of 6
    settings = resolve_settings(None, {"tile": 32, "overlap": 8, "batch_size": 6})
    start = time.perf_counter()
    outcomes = list(process_images(_tasks(tmp_path, names, tmp_path / "out"), FixedPolicy(settings), tiny_engine))
    wall = time.perf_counter() - start
    assert [o.status for o in outcomes] == ["done"] * 3
    assert any(len(o.batch_sizes) and max(o.batch_sizes) == 6 for o in outcomes)  # the batches were shared
    total = sum(o.seconds for o in outcomes)
    assert all(o.seconds > 0 for o in outcomes)
    # reads and writes of different images overlap in their threads, so allow a little more than the wall
    assert total <= 1.2 * wall, (total, wall, [o.seconds for o in outcomes])
