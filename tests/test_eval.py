"""`invsr degrade` and `invsr eval`: pairs, configurations, scoring through the real unit of work, the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
from PIL import Image

from invsr_cli.base.errors import ConfigError
from invsr_cli.evaluation.evaluate import Config, EvalResult, build_configs, run_eval
from invsr_cli.evaluation.pairs import Failure, Pair, read_pairs, source_pairs
from invsr_cli.quality.lpips import HEADS_FILE, VGG_FILE, expected_keys
from tests.harness import invsr as run
from tests.harness import text
from tests.test_report import chromium  # noqa: F401 - the fixture


def _photo(path: Path, w: int = 100, h: int = 80, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([np.sin(xx / (3 + seed)), np.cos(yy / 5), np.sin((xx + yy) / 7)], -1) * 100 + 128
    Image.fromarray(np.clip(a + rng.normal(0, 5, a.shape), 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    d = tmp_path / "hr"
    d.mkdir()
    for i in range(2):
        _photo(d / f"p{i}.png", seed=i)
    return d


def _lpips_home(root: Path) -> Path:
    """A torch hub cache holding random-weight LPIPS files under the real names (loaded by the real loader)."""
    folder = root / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    vgg, heads = expected_keys()
    torch.save({k: torch.randn(s, generator=g) * 0.05 for k, s in vgg.items()}, folder / VGG_FILE)
    torch.save({k: torch.rand(s, generator=g) for k, s in heads.items()}, folder / HEADS_FILE)
    return root


# -- configurations and results (pure) ---------------------------------------------------------------------------


def test_build_configs_is_the_cross_product_with_unique_labels() -> None:
    configs = build_configs(["default", "auto"], [1, 3], [[250, 150, 50]], ["v5", "v5_diftune"])
    assert len(configs) == 2 * 3 * 2
    assert configs[0] == Config("default steps=1 np=v5", "default", {"steps": 1}, "v5")
    assert configs[2].flags == {"timesteps": (250, 150, 50)} and configs[2].label == "default t=250,150,50 np=v5"
    assert [c.label for c in build_configs(["fidelity"])] == ["fidelity"]
    assert build_configs(["fidelity"])[0].plain
    with pytest.raises(ConfigError, match="repeat: default"):
        build_configs(["default", "default"])


def _row(image: str, config: str, preset: str, psnr: float, ssim: float, lpips: float | None) -> dict:
    return {"image": image, "config": config, "preset": preset, "psnr": psnr, "ssim": ssim, "lpips": lpips,
            "seconds": 1.0}


def test_summary_marks_the_best_and_keeps_inf() -> None:
    configs = build_configs(["default", "fidelity"])
    result = EvalResult(configs, rows=[
        _row("a", "default", "default", 20.0, 0.5, 0.3), _row("b", "default", "default", 22.0, 0.7, 0.1),
        _row("a", "fidelity", "fidelity", math.inf, 0.4, 0.4), _row("b", "fidelity", "fidelity", 21.0, 0.6, 0.2),
    ])
    rows = {r["config"]: r for r in result.summary()}
    assert rows["default"]["psnr"] == 21.0 and rows["default"]["best"] == ["ssim", "lpips"]
    assert rows["fidelity"]["psnr"] == math.inf and rows["fidelity"]["best"] == ["psnr"]
    assert result.to_dict()["configs"][1]["psnr"] == "inf"
    assert result.auto_agreement() is None


def test_auto_agreement_counts_images_where_autos_pick_scored_best() -> None:
    configs = build_configs(["auto", "default", "blur"])
    rows = [
        # image a: auto picked blur, blur is best in PSNR and LPIPS, default in SSIM
        _row("a", "auto", "blur", 25.0, 0.6, 0.2), _row("a", "default", "default", 24.0, 0.7, 0.3),
        _row("a", "blur", "blur", 25.0, 0.6, 0.2),
        # image b: auto picked default, blur is best everywhere
        _row("b", "auto", "default", 20.0, 0.5, 0.5), _row("b", "default", "default", 20.0, 0.5, 0.5),
        _row("b", "blur", "blur", 21.0, 0.6, 0.4),
    ]
    agreement = EvalResult(configs, rows=rows).auto_agreement()
    assert agreement == {"auto:psnr": {"agree": 1, "images": 2}, "auto:ssim": {"agree": 0, "images": 2},
                         "auto:lpips": {"agree": 1, "images": 2}}


# -- pairs ------------------------------------------------------------------------------------------------------


def test_source_pairs_reproducible_in_any_order_with_failures_in_line(photos: Path) -> None:
    (photos / "bad.png").write_bytes(b"not an image")
    Image.new("RGB", (40, 40)).save(photos / "small.png")
    items = list(source_pairs([str(photos)], profile="testing", size=64, seed=3))
    good = {str(p.rel): p for p in items if isinstance(p, Pair)}
    bad = [f.reason for f in items if isinstance(f, Failure)]
    assert sorted(good) == ["p0.png", "p1.png"] and good["p0.png"].lr.shape == (16, 16, 3)
    assert any("bad.png" in r for r in bad) and any("small.png" in r and "smaller than --size 64" in r for r in bad)
    again = list(source_pairs([str(photos / "p1.png"), str(photos / "p0.png")], profile="testing", size=64, seed=3))
    for p in again:
        assert np.array_equal(p.lr, good[str(p.rel)].lr) and p.params == good[str(p.rel)].params


def test_read_pairs_reports_unmatched_and_wrong_sizes(tmp_path: Path) -> None:
    for sub in ("hr", "lr"):
        (tmp_path / sub).mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "hr" / "ok.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "lr" / "ok.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "hr" / "size.png")
    Image.new("RGB", (17, 16)).save(tmp_path / "lr" / "size.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "hr" / "alone.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "lr" / "orphan.png")
    items = list(read_pairs(tmp_path))
    assert [str(p.rel) for p in items if isinstance(p, Pair)] == ["ok.png"]
    reasons = sorted(f.reason for f in items if isinstance(f, Failure))
    assert len(reasons) == 3
    assert any("alone.png: no matching file in" in r for r in reasons)
    assert any("orphan.png: no matching file in" in r for r in reasons)
    assert any("size.png: 64x64 is not exactly 4x" in r and "17x16" in r for r in reasons)
    with pytest.raises(ConfigError, match="no hr/ folder"):
        list(read_pairs(tmp_path / "hr"))


# -- run_eval through the real unit of work (tiny engine) ----------------------------------------------------------


def test_run_eval_one_load_per_predictor_and_repeatable(tiny_models, tiny_engine, photos: Path, tmp_path: Path):
    copy = tmp_path / "np_copy.pth"
    copy.write_bytes(Path(tiny_models.noise_predictor_path).read_bytes())
    pairs = [p for p in source_pairs([str(photos / "p0.png")], profile="bicubic", size=64, seed=0)
             if isinstance(p, Pair)]
    configs = build_configs(["default", "fidelity"], noise_predictors=[str(tiny_models.noise_predictor_path),
                                                                        str(copy)])
    loads: list[str | None] = []

    def load(spec: str | None):
        loads.append(spec)
        return tiny_engine

    flags = {"sd_model": str(tiny_models.sd_dir), "device": "cpu", "dtype": "fp32", "tile": 32, "overlap": 8}
    first = run_eval(pairs, configs, flags=flags, load_engine=load)
    assert loads == [str(tiny_models.noise_predictor_path), str(copy)] and first.model_loads == 2
    assert len(first.rows) == len(pairs) * len(configs) and not first.failures
    for row in first.rows:
        assert math.isfinite(row["psnr"]) and 0 < row["ssim"] <= 1 and row["lpips"] is None
    # the same predictor file under two names: the same outputs, so the same numbers
    by = {(r["image"], r["config"].split(" np=")[0], r["config"].endswith(str(copy))): r["psnr"] for r in first.rows}
    assert all(by[(i, c, False)] == by[(i, c, True)] for i, c, _ in by)
    second = run_eval(pairs, configs, flags=flags, load_engine=load)
    assert [(r["psnr"], r["ssim"]) for r in second.rows] == [(r["psnr"], r["ssim"]) for r in first.rows]


# -- the real executable ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_degrade_cli_same_bits_in_any_order_and_manifest(photos: Path, tmp_path: Path) -> None:
    (photos / "bad.png").write_bytes(b"nope")
    p = run(["degrade", photos, tmp_path / "a", "--size", "64", "--seed", "5", "--profile", "training", "--json"])
    assert p.returncode == 1, text(p)
    lines = [json.loads(line) for line in p.stdout.decode().splitlines()]
    assert sum("error" in r for r in lines) == 1 and "bad.png" in next(r["error"] for r in lines if "error" in r)
    p2 = run(["degrade", photos / "p1.png", photos / "p0.png", tmp_path / "b", "--size", "64", "--seed", "5",
              "--profile", "training"])
    assert p2.returncode == 0, text(p2)
    for name in ("p0.png", "p1.png"):
        a, b = (tmp_path / "a" / "lr" / name).read_bytes(), (tmp_path / "b" / "lr" / name).read_bytes()
        assert a == b
        assert Image.open(tmp_path / "a" / "lr" / name).size == (16, 16)
        assert Image.open(tmp_path / "a" / "hr" / name).size == (64, 64)
    manifest = [json.loads(x) for x in (tmp_path / "a" / "degrade.jsonl").read_text().splitlines()]
    assert [m["lr"] for m in manifest] == ["lr/p0.png", "lr/p1.png"]
    assert {m["profile"] for m in manifest} == {"training"} and all(m["seed"] == 5 for m in manifest)
    assert all(m["params"]["stage1"]["noise"]["kind"] in ("gaussian", "poisson") for m in manifest)


@pytest.mark.slow
def test_eval_cli_table_json_csv_and_auto_agreement(tiny_models, photos: Path, tmp_path: Path) -> None:
    (photos / "bad.png").write_bytes(b"nope")
    common = ["eval", photos, "--size", "64", "--preset", "auto,default,fidelity", "--sd-model", tiny_models.sd_dir,
              "--noise-predictor", tiny_models.noise_predictor_path, "--device", "cpu", "--dtype", "fp32",
              "--tile", "32", "--overlap", "8"]
    env = {"TORCH_HOME": str(_lpips_home(tmp_path / "torch"))}
    p = run([*common, "--csv", tmp_path / "t.csv"], env=env, timeout=900)  # 9 tiny runs; a shared CPU is slow
    out = text(p)
    assert p.returncode == 1, out  # bad.png failed, the rest scored
    table = [line.split() for line in p.stdout.decode().splitlines()]
    assert [r[0] for r in table[1:4]] == ["auto", "default", "fidelity"] and all(r[1] == "2" for r in table[1:4])
    assert "auto: picked the best of the presets in the table on PSNR" in out and "failed: " in out
    assert "bad.png" in out
    with open(tmp_path / "t.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image", "config", "preset", "psnr", "ssim", "lpips", "seconds"] and len(rows) == 6
    assert all(math.isfinite(float(r["psnr"])) and float(r["lpips"]) > 0 for r in rows)
    p2 = run([*common, "--json"], env=env, timeout=900)
    doc = json.loads(p2.stdout)
    assert p2.returncode == 1 and doc["model_loads"] == 1 and doc["images_evaluated"] == 2 and doc["lpips"] == "ok"
    assert [c["config"] for c in doc["configs"]] == ["auto", "default", "fidelity"]
    assert set(doc["configs"][0]) == {"config", "images", "psnr", "ssim", "lpips", "seconds_per_image", "best"}
    assert set(doc["auto_agreement"]) == {"auto:psnr", "auto:ssim", "auto:lpips"}
    assert [f["input"] for f in doc["failures"]] == [str(photos / "bad.png")]
    # the same numbers when re-run (the CSV of the first run against the JSON of the second)
    again = {(r["image"], r["config"]): (r["psnr"], r["ssim"], r["lpips"]) for r in doc["images"]}
    assert again == {(r["image"], r["config"]): (float(r["psnr"]), float(r["ssim"]), float(r["lpips"])) for r in rows}


@pytest.mark.slow
def test_eval_cli_pairs_bad_input_and_missing_lpips(tiny_models, photos: Path, tmp_path: Path) -> None:
    made = run(["degrade", photos, tmp_path / "set", "--size", "64"])
    assert made.returncode == 0, text(made)
    Image.new("RGB", (20, 16)).save(tmp_path / "set" / "lr" / "odd.png")
    p = run(["eval", "--pairs", tmp_path / "set", "--sd-model", tiny_models.sd_dir, "--noise-predictor",
             tiny_models.noise_predictor_path, "--device", "cpu", "--tile", "32", "--overlap", "8"],
            env={"TORCH_HOME": str(tmp_path / "empty")})
    out = text(p)
    assert p.returncode == 1, out
    assert "odd.png: no matching file in" in out
    assert "LPIPS not scored: LPIPS weights not found" in out and "invsr models download --lpips" in out
    assert p.stdout.decode().splitlines()[1].split()[:2] == ["default", "2"]
    p = run(["eval", photos, "--pairs", tmp_path / "set"])
    assert p.returncode == 2 and "one of the two" in text(p)


@pytest.mark.slow
def test_eval_cli_ctrl_c_prints_the_partial_table(tiny_models, photos: Path) -> None:
    import os
    import signal
    import subprocess

    from tests.harness import INVSR

    args = [INVSR, "eval", str(photos), "--size", "64", "--preset", "default,fidelity,blur,perceptual,auto",
            "--sd-model", str(tiny_models.sd_dir), "--noise-predictor", str(tiny_models.noise_predictor_path),
            "--device", "cpu", "--tile", "32", "--overlap", "8", "--no-lpips"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    seen = []
    for line in proc.stderr:  # the first scored image: the run is under way
        seen.append(line.decode())
        if "PSNR" in seen[-1]:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    stdout = out.decode()
    assert proc.returncode == 130, stdout + err.decode()
    assert "interrupted: partial results" in stdout and "configuration" in stdout
    rows = [line.split() for line in stdout.splitlines()[1:6]]
    assert [r[0] for r in rows] == ["default", "fidelity", "blur", "perceptual", "auto"]
    assert 1 <= sum(int(r[1]) for r in rows) < 10  # some, not all, of the 2 x 5 were scored


@pytest.mark.slow
def test_eval_report_renders_in_chromium(tiny_models, tmp_path: Path, chromium) -> None:  # noqa: F811
    import io

    from tests.cdp import Browser
    from tests.test_report import HOSTILE, _all_images_loaded

    d = tmp_path / "hr"
    d.mkdir()
    _photo(d / "p0.png", seed=0)
    _photo(d / HOSTILE, seed=1)
    page = tmp_path / "rep" / "eval.html"
    p = run(["eval", d, "--size", "64", "--preset", "default,fidelity", "--sd-model", tiny_models.sd_dir,
             "--noise-predictor", tiny_models.noise_predictor_path, "--device", "cpu", "--tile", "32",
             "--overlap", "8", "--report", page], env={"TORCH_HOME": str(_lpips_home(tmp_path / "torch"))})
    assert p.returncode == 0, text(p)
    html = page.read_text(encoding="utf-8")
    assert "<b>x&amp;y" not in html and "&lt;b&gt;x&amp;y" in html  # the name is text, not markup
    with Browser(chromium, width=1300, height=1600) as b:
        b.goto(page.as_uri())
        widths = _all_images_loaded(b)
        assert len(widths) == 2 * (2 + 2) * 2 and all(w > 0 for w in widths), widths  # HR, LR, 2 outputs; + crops
        assert b.eval("document.querySelectorAll('#table tr').length") == 3  # header + one row per configuration
        assert b.eval("document.querySelectorAll('svg.chart').length") == 3  # PSNR, SSIM, LPIPS
        assert b.eval("document.querySelectorAll('svg.chart rect').length") == 6
        assert b.eval("[...document.querySelectorAll('svg.chart rect')].every(r => r.getBBox().width > 0)")
        assert b.eval("document.querySelectorAll('td.best').length") >= 3  # each metric has a best
        assert b.eval("document.querySelectorAll('h3 b').length") == 0
        assert any(HOSTILE in t for t in b.eval("[...document.querySelectorAll('h3')].map(h => h.textContent)"))
        b.eval("window.scrollTo(0, 0)")
        shot = np.asarray(Image.open(io.BytesIO(b.screenshot())).convert("L"), dtype=np.float32)
        assert shot.std() > 20, shot.std()  # not a blank page


def test_noise_predictor_short_names_resolve_to_the_published_files(tmp_path: Path, monkeypatch) -> None:
    from invsr_cli.engine.weights import resolve

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    for name, file in (("v5", "noise_predictor_sd_turbo_v5.pth"), ("v5_diftune", "noise_predictor_sd_turbo_v5_diftune.pth")):
        src = resolve(noise_predictor=name, offline=True).noise_predictor
        assert src.repo_id == "OAOA/InvSR" and src.files[0][0] == file and src.path is None  # looked up, not fetched
    (tmp_path / "v5").write_bytes(b"x")  # a local file of that name wins
    assert resolve(noise_predictor="v5", offline=True).noise_predictor.repo_id is None


def test_make_pair_sixteen_bit_and_alpha_files(tmp_path: Path) -> None:
    from invsr_cli.evaluation.pairs import make_pair

    v = np.full((64, 64, 3), 200 * 257, np.uint16)
    import cv2

    cv2.imwrite(str(tmp_path / "deep.png"), v)  # 16-bit colour PNG
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 10
    rgba[:, 32:, 3] = 255  # left half transparent
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    deep = make_pair(tmp_path / "deep.png", PurePosixPath("deep.png"), profile="bicubic", size=64, seed=0)
    assert deep.hr.dtype == np.uint8 and np.all(deep.hr == 200) and deep.lr.shape == (16, 16, 3)
    alpha = make_pair(tmp_path / "alpha.png", PurePosixPath("alpha.png"), profile="bicubic", size=64, seed=0)
    assert np.all(alpha.hr[:, :32] == 255) and np.all(alpha.hr[:, 32:] == 10)  # flattened over white
