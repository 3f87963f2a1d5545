"""Animations (issue 12, item 3): animated GIF, APNG and WebP in, every frame upscaled, frame count, durations,
loop and disposal kept; --first-frame, --max-pixels over all frames, a corrupt frame failing only its file.
End to end through the real executable on the tiny models; the reader and writer alone where that says more."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from invsr_cli.base.errors import ImageReadError
from invsr_cli.imaging.animation import read_animation, write_animation
from tests import imagegen
from tests.harness import image_lines, upscale_json

DURATIONS = [100, 200, 300]
W, H = 24, 16


def _frames(w=W, h=H, n=3) -> list[Image.Image]:
    return [Image.fromarray(imagegen._pattern(w, h, seed=10 + k)) for k in range(n)]


def save_animation(path: Path, fmt: str, frames=None, **extra) -> Path:
    frames = frames or _frames()
    kw = {"disposal": [1, 2, 1]} if fmt == "GIF" else {"disposal": [0, 1, 0]} if fmt == "PNG" else {}
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=DURATIONS, loop=0, **{**kw, **extra})
    return path


def frames_of(path: Path) -> tuple[int, list[int], int | None, tuple[int, int], list[int]]:
    """(frame count, durations, loop, size, disposal) as Pillow reads them back."""
    with Image.open(path) as im:
        durations, disposal = [], []
        for i in range(im.n_frames):
            im.seek(i)
            im.convert("RGBA")  # WebP reports a frame's duration once it is decoded
            durations.append(int(im.info["duration"]))
            d = getattr(im, "disposal_method", None) if im.format == "GIF" else im.info.get("disposal")
            if d is not None:
                disposal.append(int(d))
        return im.n_frames, durations, im.info.get("loop"), im.size, disposal




@pytest.mark.slow
def test_gif_apng_webp_keep_frames_durations_loop_and_disposal(tmp_path, tiny_flags):
    src = tmp_path / "in"
    src.mkdir()
    save_animation(src / "a.gif", "GIF")
    save_animation(src / "b.png", "PNG")
    save_animation(src / "c.webp", "WEBP")
    p = upscale_json(src, tmp_path / "out", *tiny_flags, "--batch-size", "3")
    assert p.returncode == 0, p.stderr.decode()
    got = image_lines(p)
    for name, fmt in (("a.gif", "GIF"), ("b.png", "PNG"), ("c.webp", "WEBP")):
        out = tmp_path / "out" / name
        assert Image.open(out).format == fmt
        n, durations, loop, size, disposal = frames_of(out)
        assert (n, durations, loop, size) == (3, DURATIONS, 0, (4 * W, 4 * H)), name
        if fmt != "WEBP":
            assert disposal == frames_of(src / name)[4], name
        o = got[name]
        assert o["status"] == "done" and o["frames"] == 3 and (o["width"], o["height"]) == (4 * W, 4 * H)
        # frames of one animation are batched like tiles: 3 frames of one tile each run as one batch of 3
        assert o["tiles"] == 3 and o["batch_sizes"] == [3], o
    # each output frame is its own frame upscaled, not one frame repeated
    with Image.open(tmp_path / "out" / "b.png") as im:
        shown = []
        for i in range(3):
            im.seek(i)
            shown.append(np.asarray(im.convert("RGB")).astype(float))
    assert np.abs(shown[0] - shown[1]).mean() > 5 and np.abs(shown[1] - shown[2]).mean() > 5


@pytest.mark.slow
def test_a_static_area_stays_static(tmp_path, tiny_flags):
    """The same seed for every frame: tiles that see the same pixels in every frame give the same output."""
    base = imagegen._pattern(72, 32, seed=3)
    frames = []
    for k in range(3):
        f = base.copy()
        f[:, 48:] = imagegen._pattern(24, 32, seed=20 + k)  # only the right third moves
        frames.append(Image.fromarray(f))
    save_animation(tmp_path / "in.png", "PNG", frames)
    p = upscale_json(tmp_path / "in.png", tmp_path / "out", *tiny_flags, "--batch-size", "1")
    assert p.returncode == 0, p.stderr.decode()
    with Image.open(tmp_path / "out" / "in.png") as im:
        out = []
        for i in range(3):
            im.seek(i)
            out.append(np.asarray(im.convert("RGB")))
    # tiles start at x = 0, 24, 40 (32 px, overlap 8): LR x < 24 is covered by the first tile only, which sees
    # the static part in every frame
    assert np.array_equal(out[0][:, :96], out[1][:, :96]) and np.array_equal(out[0][:, :96], out[2][:, :96])
    assert not np.array_equal(out[0][:, 200:], out[1][:, 200:])


@pytest.mark.slow
def test_first_frame_gives_a_still(tmp_path, tiny_flags):
    save_animation(tmp_path / "a.gif", "GIF")
    p = upscale_json(tmp_path / "a.gif", tmp_path / "out", *tiny_flags, "--first-frame")
    assert p.returncode == 0, p.stderr.decode()
    with Image.open(tmp_path / "out" / "a.gif") as im:
        assert getattr(im, "n_frames", 1) == 1 and im.size == (4 * W, 4 * H)
    assert image_lines(p)["a.gif"]["frames"] == 1


@pytest.mark.slow
def test_max_pixels_counts_every_frame(tmp_path, tiny_flags):
    save_animation(tmp_path / "a.gif", "GIF")  # 3 x 24 x 16 = 1152 px
    p = upscale_json(tmp_path / "a.gif", tmp_path / "out", *tiny_flags, "--max-pixels", 1000)
    assert p.returncode == 1
    assert "3 frames of 24x16 = 1152 px exceeds --max-pixels 1000 px" in image_lines(p)["a.gif"]["reason"]
    p = upscale_json(tmp_path / "a.gif", tmp_path / "out2", *tiny_flags, "--max-pixels", 1000, "--first-frame")
    assert p.returncode == 0, p.stderr.decode()


@pytest.mark.parametrize("fmt", ["GIF", "PNG"])
@pytest.mark.slow
def test_a_corrupt_frame_fails_that_file_only(tmp_path, tiny_flags, fmt):
    src = tmp_path / "in"
    src.mkdir()
    ext = fmt.lower()
    good = save_animation(src / f"good.{ext}", fmt)
    data = good.read_bytes()
    (src / f"broken.{ext}").write_bytes(data[:-40])  # the last frame cut short
    imagegen.rgb(src / "still.png", 20, 12)
    p = upscale_json(src, tmp_path / "out", *tiny_flags)
    assert p.returncode == 1, p.stderr.decode()
    got = image_lines(p)
    assert got[f"good.{ext}"]["status"] == "done" and got["still.png"]["status"] == "done"
    assert got[f"broken.{ext}"]["status"] == "failed"
    assert got[f"broken.{ext}"]["reason"].startswith("frame 3 of 3 cannot be decoded (OSError: image file is "
                                                     "truncated"), got[f"broken.{ext}"]
    assert not (tmp_path / "out" / f"broken.{ext}").exists()


@pytest.mark.slow
def test_an_animated_gif_written_as_apng_or_webp_keeps_its_timing(tmp_path, tiny_flags):
    save_animation(tmp_path / "a.gif", "GIF")
    for fmt, want in (("png", "PNG"), ("webp", "WEBP")):
        p = upscale_json(tmp_path / "a.gif", tmp_path / fmt, *tiny_flags, "--format", fmt)
        assert p.returncode == 0, p.stderr.decode()
        out = tmp_path / fmt / f"a.{fmt}"
        assert Image.open(out).format == want
        assert frames_of(out)[:4] == (3, DURATIONS, 0, (4 * W, 4 * H))
    p = upscale_json(tmp_path / "a.gif", tmp_path / "jpg", *tiny_flags, "--format", "jpg")
    assert p.returncode == 1 and "jpg cannot hold an animation" in image_lines(p)["a.gif"]["reason"]
    dry = image_lines(upscale_json(tmp_path / "a.gif", tmp_path / "jpg", *tiny_flags, "--format", "jpg", "--dry-run"))
    assert dry["a.gif"]["status"] == "failed" and "cannot hold an animation" in dry["a.gif"]["reason"]


# -- the reader and writer alone ------------------------------------------------------------------------------------


def test_reader_composites_partial_frames(tmp_path):
    """A GIF whose second frame covers only a corner: the reader gives the whole picture, as a viewer shows it."""
    base = np.zeros((16, 16, 3), np.uint8)
    base[:] = (200, 50, 50)
    corner = base.copy()
    corner[:4, :4] = (20, 200, 20)  # Pillow's GIF writer stores only the changed box
    frames = [Image.fromarray(base), Image.fromarray(corner)]
    frames[0].save(tmp_path / "p.gif", save_all=True, append_images=frames[1:], duration=[50, 60], loop=0)
    anim = read_animation(tmp_path / "p.gif")
    assert anim.n_frames == 2 and anim.durations == (50, 60) and anim.loop == 0
    second = np.rint(anim.frames[1] * 255).astype(np.uint8)
    assert (second[:4, :4] == (20, 200, 20)).all() and (second[8:, 8:] == (200, 50, 50)).all()


def test_gif_alpha_round_trips_as_binary_transparency(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 120
    rgba[:, 4:, 3] = 255  # left half transparent
    frames = [Image.fromarray(rgba), Image.fromarray(np.roll(rgba, 1, axis=1))]
    frames[0].save(tmp_path / "t.gif", save_all=True, append_images=frames[1:], duration=[40, 40], loop=0,
                   disposal=2)
    anim = read_animation(tmp_path / "t.gif")
    assert anim.alphas is not None and anim.n_frames == 2 and anim.alphas[0][:, :4].max() == 0 and anim.alphas[0][:, 4:].min() == 1
    write_animation(tmp_path / "o.gif", list(anim.frames), alphas=list(anim.alphas), source=anim, format="gif")
    back = read_animation(tmp_path / "o.gif")
    assert back.alphas is not None and np.array_equal(back.alphas[0], anim.alphas[0])
    assert back.durations == (40, 40) and back.disposal == anim.disposal


def test_gif_palette_is_shared_by_every_frame(tmp_path):
    """One adaptive palette for the animation: a colour in two frames maps to the same index in both."""
    rng = np.random.default_rng(0)
    f0 = rng.random((32, 32, 3)).astype(np.float32)
    f1 = f0.copy()
    f1[:8] = rng.random((8, 32, 3))
    write_animation(tmp_path / "o.gif", [f0], alphas=None, source=None, format="gif")  # no source: a still
    with Image.open(tmp_path / "o.gif") as im:
        assert getattr(im, "n_frames", 1) == 1
    src = read_animation(_two_frame_gif(tmp_path))
    write_animation(tmp_path / "o2.gif", [f0, f1], alphas=None, source=src, format="gif")
    with Image.open(tmp_path / "o2.gif") as im:
        im.seek(0)
        a = np.asarray(im.convert("RGB"))
        im.seek(1)
        b = np.asarray(im.convert("RGB"))
    assert np.array_equal(a[8:], b[8:])  # the unchanged rows come out identical


def _two_frame_gif(tmp_path: Path) -> Path:
    frames = _frames(32, 32, 2)
    frames[0].save(tmp_path / "two.gif", save_all=True, append_images=frames[1:], duration=[70, 80], loop=0)
    return tmp_path / "two.gif"


def test_reader_names_the_file_for_a_bad_header(tmp_path):
    (tmp_path / "x.gif").write_bytes(b"GIF89a" + bytes(10))
    with pytest.raises(ImageReadError, match="x.gif"):
        read_animation(tmp_path / "x.gif")


def test_webp_round_trip_in_memory(tmp_path):
    buf = io.BytesIO()
    _frames()[0].save(buf, "WEBP", save_all=True, append_images=_frames()[1:], duration=DURATIONS, loop=0)
    (tmp_path / "a.webp").write_bytes(buf.getvalue())
    anim = read_animation(tmp_path / "a.webp")
    assert anim.format == "webp" and anim.durations == tuple(DURATIONS) and anim.disposal == ()


def test_read_input_reduces_every_frame_and_counts_them_against_max_pixels(tmp_path):
    from dataclasses import replace

    from invsr_cli.settings.settings import DEFAULTS
    from invsr_cli.work.inputs import read_input

    path = save_animation(tmp_path / "a.png", "PNG", _frames(48, 32))
    anim, source = read_input(path, replace(DEFAULTS, max_input_side=24))
    assert source == (48, 32) and anim.n_frames == 3 and (anim.width, anim.height) == (24, 16)
    assert all(f.shape == (16, 24, 3) for f in anim.frames) and anim.durations == tuple(DURATIONS)
    # 3 frames of 24x16 = 1152 px: over 1000 after the reduction, within 1200
    with pytest.raises(ImageReadError, match="3 frames of 24x16 = 1152 px exceeds --max-pixels 1000 px"):
        read_input(path, replace(DEFAULTS, max_input_side=24, max_pixels=1000))
    assert read_input(path, replace(DEFAULTS, max_input_side=24, max_pixels=1200))[0].n_frames == 3
    still, _ = read_input(path, replace(DEFAULTS, first_frame=True))
    assert not hasattr(still, "frames") and still.rgb.shape == (32, 48, 3)


@pytest.mark.slow
def test_max_tiles_bounds_the_work_before_compute_and_dry_run_counts_the_same(tmp_path, tiny_models):
    """Issue 19, item 2: --max-pixels counts pixels, not work. The tiles a file costs (every frame) are counted
    before compute against --max-tiles; the dry run counts them the same way (tiny frames: one 16 px tile each)."""
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(60)]
    frames[0].save(tmp_path / "many.gif", save_all=True, append_images=frames[1:], duration=20, loop=0)
    models = ["--sd-model", str(tiny_models.sd_dir), "--noise-predictor", str(tiny_models.noise_predictor_path),
              "--device", "cpu"]
    planned = image_lines(upscale_json(tmp_path / "many.gif", tmp_path / "plan", *models, "--dry-run"))["many.gif"]
    assert (planned["status"], planned["tiles"], planned["tile"], planned["frames"]) == ("planned", 60, 16, 60)
    p = upscale_json(tmp_path / "many.gif", tmp_path / "out", *models, "--max-tiles", "50")
    o = image_lines(p)["many.gif"]
    assert p.returncode != 0 and o["status"] == "failed"
    assert o["reason"] == "60 tiles of work exceeds --max-tiles 50 (raise --max-tiles to run it anyway)", o
    assert not (tmp_path / "out" / "many.gif").exists()
    assert json.loads(p.stdout.decode().splitlines()[-1])["tiles"] == 0  # refused before any tile ran
