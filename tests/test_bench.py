"""`invsr bench` on the tiny random models: the report's shape, and that the speed-ups keep the results."""

from __future__ import annotations

import json
import os
import sys

import pytest

from invsr_cli.commands.bench import STAGES, parse_size, run_bench


def test_cli_bench_json_stdout_holds_only_the_json(monkeypatch):
    """As upscale and watch: with --json, whatever the run prints (a library's chatter) goes to stderr, so stdout
    parses as JSON whole."""
    from typer.testing import CliRunner

    import invsr_cli.commands.bench as bench
    from invsr_cli.commands.cli import app

    def chatty(opts):
        print("Loading weights: 100%")  # what a library prints while the models load
        return {"config": {"quick": opts.quick}}

    monkeypatch.setattr(bench, "run_bench", chatty)
    result = CliRunner().invoke(app, ["bench", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"config": {"quick": True}}
    assert "Loading weights" in result.stderr


@pytest.mark.slow
def test_cli_bench_tiny_quick_json():
    from typer.testing import CliRunner

    from invsr_cli.commands.cli import app

    result = CliRunner().invoke(app, ["bench", "--tiny", "--quick", "--json", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    eng, base, ratios = report["engine"], report["baseline"], report["ratios"]
    assert report["config"]["lr_width"] == 64 and report["config"]["tile"] == 64
    assert report["config"]["baseline_tile"] == 128 and report["config"]["baseline_overlap"] == 64
    assert report["machine"]["device"] == "cpu"
    assert report["machine"]["cores"] == (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                          else os.cpu_count())  # the cores this process may use
    for path in (eng, base):
        assert set(STAGES) <= set(path["stages"])
        assert path["seconds"] > 0 and path["tiles"] >= 1 and path["tiles_per_s"] > 0
        assert path["output_mp"] == pytest.approx(256 * 256 / 1e6, abs=1e-4)
        assert path["peak_rss_mb"] > 0 and path["peak_rss_scope"] in ("path", "process")
        for stage in ("noise_predictor", "vae_encode", "unet", "vae_decode", "text_encoder"):
            assert path["stages"][stage] > 0 and path["calls"][stage] >= 1
    assert base["tiles"] >= eng["tiles"]
    assert ratios["time"] > 0 and ratios["tiles"] == pytest.approx(base["tiles"] / eng["tiles"], rel=1e-3)
    assert report["output_difference"] is None  # different tiles: results differ by design


@pytest.mark.slow
def test_speedups_do_not_change_results(tiny_engine):
    """Posterior mean, fp32, the same tile/overlap: prompt caching, float32 accumulation on the device and tiles
    packed across images give the authors' pipeline's result to 1e-4 (issue 4)."""
    report = run_bench(engine=tiny_engine, lr_size="96x32", images=2, tile=32, overlap=8, batch_size=3,
                       posterior="mean", warmup=0, baseline_tile=32, baseline_overlap=8)
    eng, base = report["engine"], report["baseline"]
    assert eng["tiles"] == base["tiles"] == 2 * 4  # 32/8 on 96x32: 4 tiles per image
    assert eng["calls"]["text_encoder"] == 1  # the prompt once per run
    assert eng["calls"]["unet"] == 3  # 8 tiles packed across the two images in batches of 3
    assert base["calls"]["unet"] == base["calls"]["text_encoder"] == 2 * 2  # one image per batch, prompt each
    assert report["machine"]["dtype"] == "float32" and report["config"]["posterior"] == "mean"
    assert report["output_difference"]["max_abs_diff"] < 1e-4


def test_no_baseline(tiny_engine):
    report = run_bench(engine=tiny_engine, lr_size="32x32", tile=32, baseline=False, warmup=0)
    assert report["baseline"] is None and report["ratios"] is None and report["engine"]["tiles"] == 1


def test_parse_size():
    from invsr_cli.base.errors import ConfigError

    assert parse_size("192x128") == (192, 128)
    with pytest.raises(ConfigError):
        parse_size("128")


def test_baseline_first_measures_the_same_thing(tiny_engine):
    """The order flag only swaps which path is timed first: same tiles, same results, order recorded."""
    report = run_bench(engine=tiny_engine, lr_size="64x32", tile=32, overlap=8, baseline_tile=32,
                       baseline_overlap=8, posterior="mean", warmup=0, baseline_first=True)
    assert report["config"]["order"] == "baseline, engine"
    assert report["engine"]["tiles"] == report["baseline"]["tiles"] == 3
    assert report["output_difference"]["max_abs_diff"] < 1e-4


_RSS_PROBE = """
import json
import numpy as np
from invsr_cli.commands.bench import _peak_rss_mb, _reset_peak_rss
ok = _reset_peak_rss()
big = np.ones(400 * 2**20 // 8)  # 400 MB, touched
with_big = _peak_rss_mb(True)
del big
print(json.dumps({"ok": ok and _reset_peak_rss(), "with_big": with_big, "after": _peak_rss_mb(True)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM reset is Linux-only")
@pytest.mark.slow
def test_peak_rss_is_per_path_on_linux():
    """After a reset the high-water mark forgets an earlier, larger peak: each path gets its own figure.
    In a fresh process with glibc's default allocator, so the freed 400 MB really leave the process."""
    import subprocess

    env = {**os.environ, "INVSR_MALLOC": "system"}
    r = json.loads(subprocess.run([sys.executable, "-c", _RSS_PROBE], env=env, check=True, capture_output=True,
                                  text=True).stdout)
    if not r["ok"]:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert r["with_big"] - r["after"] > 300, r


@pytest.mark.slow
def test_repeat_alternates_and_reports_the_median(tiny_engine, monkeypatch):
    import invsr_cli.commands.bench as bench

    order, real = [], bench._measure

    def spy(engine, timer, fn, hr_pixels):
        order.append(fn.__name__)
        return real(engine, timer, fn, hr_pixels)

    monkeypatch.setattr(bench, "_measure", spy)
    report = run_bench(engine=tiny_engine, lr_size="32x32", tile=32, overlap=8, baseline_tile=32,
                       baseline_overlap=8, posterior="mean", warmup=0, repeat=3)
    assert order == ["run_engine", "run_baseline", "run_baseline", "run_engine", "run_engine", "run_baseline"]
    for path in (report["engine"], report["baseline"]):
        assert len(path["seconds_runs"]) == 3
        assert path["seconds"] == sorted(path["seconds_runs"])[1]
    assert report["ratios"]["time"] == pytest.approx(report["baseline"]["seconds"] / report["engine"]["seconds"],
                                                     rel=1e-2)
