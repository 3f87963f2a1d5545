"""End-to-end tests through the real `invsr` executable (subprocess), with the tiny random models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import imagegen
from tests.harness import invsr, text


@pytest.fixture
def mixed(tmp_path) -> Path:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    imagegen.rgb(d / "a.png")
    imagegen.rgb(d / "b.jpg", seed=5, quality=90)
    imagegen.rgba(d / "c_rgba.png")
    imagegen.gray(d / "d_gray.png")
    imagegen.gray16(d / "e16.png")
    imagegen.exif_rotated_jpeg(d / "f_rot.jpg")
    imagegen.rgb(d / "sub" / "g.png", 16, 16, seed=7)
    imagegen.rgb(d / ".hidden.png")
    return d


@pytest.mark.slow
def test_folder_of_every_kind_end_to_end(mixed, tmp_path, tiny_flags):
    out = tmp_path / "out"
    p = invsr(["upscale", mixed, out, "-r", *tiny_flags], cwd=tmp_path)
    assert p.returncode == 0, text(p)
    a = Image.open(out / "a.png")
    assert a.size == (128, 96) and a.mode == "RGB"
    b = Image.open(out / "b.jpg")
    assert b.format == "JPEG" and b.size == (128, 96)
    c = Image.open(out / "c_rgba.png")
    assert c.mode == "RGBA" and c.size == (128, 128)
    alpha = np.asarray(c)[..., 3]
    assert alpha[:, :56].max() < 16 and alpha[:, 72:].min() > 239  # alpha upscaled and re-attached
    d = Image.open(out / "d_gray.png")
    assert d.mode == "L" and d.size == (80, 112)
    e = Image.open(out / "e16.png")
    assert e.mode.startswith("I") and e.size == (96, 64)
    assert np.asarray(e).max() > 255  # really 16-bit values, not 8-bit ones in a 16-bit container
    f = Image.open(out / "f_rot.jpg")
    assert f.size == (64, 128)  # stored 32x16 with Orientation=6: displayed 16x32, upscaled x4
    assert f.getexif().get(0x0112, 1) == 1
    assert Image.open(out / "sub" / "g.png").size == (64, 64)
    assert not (out / ".hidden.png").exists()
    lines = p.stdout.decode().splitlines()
    assert sum(line.startswith("done") for line in lines) == 7
    assert lines[-1].startswith("summary: processed 7, skipped 0, failed 0")
    everything = p.stdout.decode() + p.stderr.decode()
    assert "\x1b" not in everything and "\r" not in everything  # not a TTY: no control characters, no bars


@pytest.mark.slow
def test_glob_and_stdin_lists(mixed, tmp_path, tiny_flags):
    p = invsr(["upscale", "in/*.png", "out_glob", *tiny_flags], cwd=tmp_path)
    assert p.returncode == 0, text(p)
    assert sorted(x.name for x in (tmp_path / "out_glob").glob("*.png")) == ["a.png", "c_rgba.png", "d_gray.png",
                                                                             "e16.png"]
    p = invsr(["upscale", "-0", "-", "out_stdin", *tiny_flags], cwd=tmp_path, stdin=b"in/a.png\0in/sub/g.png\0")
    assert p.returncode == 0, text(p)
    assert (tmp_path / "out_stdin" / "in" / "a.png").is_file()
    assert (tmp_path / "out_stdin" / "in" / "sub" / "g.png").is_file()
    p = invsr(["upscale", "-", "-o", "out_lines", *tiny_flags], cwd=tmp_path, stdin=f"{mixed / 'a.png'}\n".encode())
    assert p.returncode == 0, text(p)
    assert (tmp_path / "out_lines" / "a.png").is_file()  # absolute stdin path: its basename


@pytest.mark.slow
def test_json_output_and_summary(mixed, tmp_path, tiny_flags):
    p = invsr(["upscale", mixed / "a.png", mixed / "d_gray.png", tmp_path / "o", "--json", *tiny_flags])
    assert p.returncode == 0, text(p)
    objs = [json.loads(line) for line in p.stdout.decode().splitlines()]
    assert [o["type"] for o in objs] == ["image", "image", "summary"]
    assert objs[0]["status"] == "done" and objs[0]["width"] == 128 and objs[0]["timesteps"] == [200]
    assert objs[-1]["processed"] == 2 and objs[-1]["failed"] == 0


@pytest.mark.slow
def test_corrupt_file_among_good_ones(mixed, tmp_path, tiny_flags):
    (mixed / "bad.png").write_bytes(b"this is not a png")
    (mixed / "trunc.jpg").write_bytes((mixed / "b.jpg").read_bytes()[:200])
    out = tmp_path / "out"
    p = invsr(["upscale", mixed, out, *tiny_flags])
    assert p.returncode == 1, text(p)
    out_text = text(p)
    assert "bad.png" in out_text and "trunc.jpg" in out_text
    for name in ("a.png", "b.jpg", "c_rgba.png", "d_gray.png", "e16.png", "f_rot.jpg"):
        assert (out / name).is_file(), name
    assert not (out / "bad.png").exists() and not (out / "trunc.jpg").exists()
    assert "failed 2" in p.stdout.decode().splitlines()[-1]


@pytest.mark.slow
def test_skip_existing_overwrite_and_stale_outputs(mixed, tmp_path, tiny_flags):
    out = tmp_path / "out"
    args = ["upscale", mixed / "a.png", out, *tiny_flags]
    assert invsr(args).returncode == 0
    mtime = (out / "a.png").stat().st_mtime_ns
    p = invsr(args)
    assert p.returncode == 0 and "skipped" in p.stdout.decode(), text(p)
    assert (out / "a.png").stat().st_mtime_ns == mtime
    p = invsr([*args, "--overwrite"])
    assert p.returncode == 0 and (out / "a.png").stat().st_mtime_ns != mtime, text(p)
    mtime = (out / "a.png").stat().st_mtime_ns
    p = invsr([*args, "--steps", "2"])  # other settings: the manifest says the output is stale
    assert p.returncode == 0 and "stale" in text(p) and (out / "a.png").stat().st_mtime_ns != mtime


@pytest.mark.slow
def test_dry_run_computes_and_writes_nothing(mixed, tmp_path, tiny_flags):
    out = tmp_path / "out"
    p = invsr(["upscale", mixed, out, "--dry-run", "--tile", "16", "--overlap", "0"])  # no models needed
    assert p.returncode == 0, text(p)
    lines = p.stdout.decode().splitlines()
    plan = [line for line in lines if line.startswith("plan")]
    assert len(plan) == 6 and any("a.png" in line and "128x96" in line and "tiles=4" in line for line in plan)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_collisions_are_reported_before_any_work(tmp_path, tiny_flags):
    d = tmp_path / "in"
    d.mkdir()
    imagegen.rgb(d / "x.jpg")
    imagegen.rgb(d / "x.png")
    p = invsr(["upscale", d, tmp_path / "out", "--format", "png", *tiny_flags])
    assert p.returncode == 2, text(p)
    assert "x.jpg" in text(p) and "x.png" in text(p)
    assert not (tmp_path / "out" / "x.png").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--tile", "100"], "multiple of 16"),
        (["--steps", "7"], "`steps`"),
        (["--preset", "nope"], "unknown preset `nope`"),
        (["--blend", "cosine"], "gaussian, linear"),
        (["--no-such-flag"], "No such option"),
    ],
)
@pytest.mark.slow
def test_usage_and_config_errors_exit_2(tmp_path, args, fragment):
    imagegen.rgb(tmp_path / "a.png")
    p = invsr(["upscale", tmp_path / "a.png", tmp_path / "out", *args])
    assert p.returncode == 2, text(p)
    assert fragment in text(p)


@pytest.mark.slow
def test_missing_weights_offline_exit_3(tmp_path):
    imagegen.rgb(tmp_path / "a.png")
    p = invsr(["upscale", tmp_path / "a.png", tmp_path / "out"], env={"HF_HOME": str(tmp_path / "hf")})
    assert p.returncode == 3, text(p)
    assert "invsr models download" in text(p)
    assert "Traceback" not in text(p)


@pytest.mark.slow
def test_nonexistent_input_is_a_failure_not_a_crash(tmp_path, tiny_flags):
    imagegen.rgb(tmp_path / "a.png")
    p = invsr(["upscale", tmp_path / "a.png", tmp_path / "missing.png", tmp_path / "out", *tiny_flags])
    assert p.returncode == 1, text(p)
    assert "missing.png" in text(p) and (tmp_path / "out" / "a.png").is_file()
    assert "processed 1, skipped 0, failed 1" in p.stdout.decode().splitlines()[-1]  # the summary counts it


@pytest.mark.slow
def test_batch_size_does_not_change_results(tmp_path, tiny_flags):
    d = tmp_path / "in"
    d.mkdir()
    for i, (w, h) in enumerate([(48, 40), (32, 32), (64, 24)]):
        imagegen.rgb(d / f"{i}.png", w, h, seed=i)
    outs = {}
    for bs in (1, 7):
        out = tmp_path / f"out{bs}"
        p = invsr(["upscale", d, out, "--batch-size", bs, "--posterior", "mean", *tiny_flags])
        assert p.returncode == 0, text(p)
        outs[bs] = {f.name: np.asarray(Image.open(f)).astype(int) for f in sorted(out.glob("*.png"))}
    assert outs[1].keys() == outs[7].keys() and len(outs[1]) == 3
    for name in outs[1]:
        diff = np.abs(outs[1][name] - outs[7][name])
        # Batched convolutions round differently in the last float bit; after 8-bit quantisation that can flip a
        # pixel by one level, never more.
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (name, diff.max(), (diff > 0).mean())


@pytest.mark.slow
def test_presets_command_lists_and_shows():
    p = invsr(["presets"])
    assert p.returncode == 0, text(p)
    names = [line.split()[0] for line in p.stdout.decode().splitlines()]
    assert {"default", "noisy", "blur", "fidelity", "perceptual", "large", "auto"} <= set(names)
    p = invsr(["presets", "show", "blur"])
    assert p.returncode == 0 and "- 250" in p.stdout.decode(), text(p)


@pytest.mark.slow
def test_version_and_help_have_examples():
    p = invsr(["--version"])
    assert p.returncode == 0 and p.stdout.decode().startswith("invsr ")
    for cmd in (["--help"], ["upscale", "--help"], ["presets", "--help"], ["models", "--help"],
                ["analyse", "--help"], ["doctor", "--help"], ["report", "--help"]):
        p = invsr(cmd)
        assert p.returncode == 0 and "Example" in p.stdout.decode(), (cmd, text(p))


@pytest.mark.slow
def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys, invsr_cli.commands.cli; heavy = [m for m in ('torch', 'diffusers', 'transformers', 'cv2', 'PIL',"
            " 'numpy') if m in sys.modules]; print(heavy)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr


@pytest.mark.slow
def test_wheel_ships_presets(tmp_path):
    """Build the wheel, install it alone in a fresh venv, and list the presets from there."""
    root = Path(__file__).resolve().parents[1]
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist,
                    root], check=True, capture_output=True)
    import zipfile

    names = zipfile.ZipFile(next(dist.glob("*.whl"))).namelist()
    assert "invsr_cli/templates/report.html.j2" in names, names  # the report's template is package data
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    # Without PYTHONPATH: a source tree on it (PYTHONPATH=$PWD, to test a worktree) carries invsr_cli.egg-info,
    # and pip would then call the wheel "already satisfied" and install nothing.
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps",
                    "--no-index", *dist.glob("*.whl")], check=True, capture_output=True, env=clean)
    import typer  # the dependencies come from the dev venv; invsr_cli itself must come from the wheel

    deps = str(Path(typer.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": deps}
    where = subprocess.run([venv / "bin" / "python", "-c", "import invsr_cli; print(invsr_cli.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert str(venv) in where.stdout, where.stdout + where.stderr
    p = subprocess.run([venv / "bin" / "invsr", "presets"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for name in ("default", "noisy", "blur", "fidelity", "perceptual", "large", "auto"):
        assert name in p.stdout


@pytest.mark.slow
def test_overlap_above_half_the_tile_is_refused_before_any_work(tmp_path, tiny_models):
    imagegen.rgb(tmp_path / "a.png")
    p = invsr(["upscale", tmp_path / "a.png", tmp_path / "out", "--tile", "128", "--overlap", "96",
             "--sd-model", tiny_models.sd_dir, "--noise-predictor", tiny_models.noise_predictor_path])
    assert p.returncode == 2, text(p)
    assert "`overlap` must be at most half of `tile` (128 LR px), so at most 64; got 96" in text(p)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_verbose_prints_plan_schedule_batches_stages_and_the_engine(tmp_path, tiny_flags):
    imagegen.rgb(tmp_path / "a.png", 48, 40, seed=3)
    p = invsr(["upscale", tmp_path / "a.png", tmp_path / "out", "-v", "--steps", "2", "--batch-size", "2", *tiny_flags])
    assert p.returncode == 0, text(p)
    out, err = p.stdout.decode(), p.stderr.decode()
    assert "loading the models:" in err
    assert "engine: device cpu, dtype fp32, load " in err and "models {" in err
    assert "plan: 4 tile(s) of 32 px, overlap 8; schedule 200,100; batches 2,2" in out
    stages = next(line for line in out.splitlines() if "seconds:" in line)
    for stage in ("noise_predictor", "vae_encode", "unet", "vae_decode", "write"):
        assert f"{stage} " in stages, stages
    seconds = [float(v) for v in stages.split("seconds:")[1].replace(",", "").split()[1::2]]
    assert all(v >= 0 for v in seconds) and sum(seconds) > 0
    quiet = invsr(["upscale", tmp_path / "a.png", tmp_path / "out2", *tiny_flags])
    assert "plan:" not in text(quiet) and "engine:" not in text(quiet)
