"""The degradation analyser and the `auto` preset's decision rule (invsr_cli.settings.analyse).

The labelled set is built from real photographs bundled with scikit-image (no download): each photo and four
3/4 crops of it are reduced 4x with pixel-area averaging and then (a) left clean, (b) blurred with a Gaussian
of sigma 1.5-3.5 at full resolution before the reduction, (c) given Gaussian noise of sigma 10-30 (of 255)
after it, (d) JPEG-compressed at quality 40-15 after it. The thresholds in auto.yaml were tuned on TUNING
photos only; HELD_OUT photos were looked at only to check them (docs/AUTO_PRESET.md).
"""

from __future__ import annotations

import io
import math
import time
from collections import Counter
from itertools import pairwise

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from invsr_cli.base.errors import ConfigError, InputError
from invsr_cli.settings.analyse import METRICS, Degradation, analyse_image
from invsr_cli.settings.auto_rules import (
    AutoRules,
    Bound,
    Choice,
    Rule,
    choose,
    choose_preset,
    load_default_auto_rules,
    parse_auto_rules,
)

skimage_data = pytest.importorskip("skimage.data")

TUNING = ("astronaut", "coffee", "rocket", "camera", "motorcycle", "coins")
HELD_OUT = ("chelsea", "immunohistochemistry", "hubble_deep_field", "retina", "moon")
BLUR_SIGMAS = (1.5, 2.0, 2.5, 3.0, 3.5)  # at full resolution, before the 4x reduction
NOISE_SIGMAS = (10, 15, 20, 25, 30)  # of 255, after the reduction
JPEG_QUALITIES = (40, 30, 20, 15)  # after the reduction
CLASSES = ("clean", "blur", "noise", "jpeg")
SHIPPED_PRESETS = ("default", "noisy", "blur", "fidelity", "perceptual", "large")


def _photo(name: str) -> np.ndarray:
    """A bundled photo as HxWx3 uint8 (grey photos repeated to RGB)."""
    img = skimage_data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage_data, name)()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def _views(hr: np.ndarray) -> list[np.ndarray]:
    """The full frame and its four corner crops of 3/4 the size: more samples, different content mixes."""
    h, w = hr.shape[:2]
    ch, cw = int(h * 0.75), int(w * 0.75)
    return [hr] + [hr[y : y + ch, x : x + cw] for y in (0, h - ch) for x in (0, w - cw)]


def _reduce4(hr: np.ndarray) -> np.ndarray:
    h, w = hr.shape[0] // 4 * 4, hr.shape[1] // 4 * 4
    return cv2.resize(hr[:h, :w], (w // 4, h // 4), interpolation=cv2.INTER_AREA)


def _blur(hr: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(hr, (0, 0), sigma)


def _noise(lr: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(lr + rng.normal(0.0, sigma, lr.shape)), 0, 255).astype(np.uint8)


def _jpeg(lr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(lr).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.fixture(scope="module")
def labelled():
    """[(photo, view, class, strength, Degradation)] for every photo, view, class and strength."""
    rows = []
    for name in TUNING + HELD_OUT:
        for v, hr in enumerate(_views(_photo(name))):
            lr = _reduce4(hr)
            rows.append((name, v, "clean", 0, analyse_image(lr)))
            for s in BLUR_SIGMAS:
                rows.append((name, v, "blur", s, analyse_image(_reduce4(_blur(hr, s)))))
            for i, s in enumerate(NOISE_SIGMAS):
                rows.append((name, v, "noise", s, analyse_image(_noise(lr, s, seed=1000 * v + i))))
            for q in JPEG_QUALITIES:
                rows.append((name, v, "jpeg", q, analyse_image(_jpeg(lr, q))))
    return rows


# -- the labelled set ----------------------------------------------------------------------------------------


def test_estimates_are_monotonic_in_the_applied_strength(labelled):
    by = {(n, v, c, s): d for n, v, c, s, d in labelled}
    views = sorted({(n, v) for n, v, *_ in labelled})
    failures = []
    for n, v in views:
        clean = by[(n, v, "clean", 0)]
        series = {
            "noise_sigma vs noise sigma": [clean.noise_sigma]
            + [by[(n, v, "noise", s)].noise_sigma for s in NOISE_SIGMAS],
            "blur vs blur sigma": [clean.blur] + [by[(n, v, "blur", s)].blur for s in BLUR_SIGMAS],
            "blockiness vs falling JPEG quality": [clean.blockiness]
            + [by[(n, v, "jpeg", q)].blockiness for q in JPEG_QUALITIES],
        }
        for what, values in series.items():
            if not all(b > a for a, b in pairwise(values)):
                failures.append(f"{n} view {v}: {what}: {np.round(values, 3).tolist()}")
    assert not failures, "not increasing:\n" + "\n".join(failures)


def _confusion(rows) -> tuple[str, dict[str, float]]:
    rules = load_default_auto_rules()
    presets = list(rules.presets)
    counts = Counter((c, choose_preset(d, rules)) for _, _, c, _, d in rows)
    width = max(len(p) for p in presets) + 2
    lines = ["class  \\ chosen " + "".join(f"{p:>{width}}" for p in presets) + f"{'n':>6}{'ok':>8}"]
    accuracy = {}
    for c in CLASSES:
        n = sum(counts[(c, p)] for p in presets)
        good = {"blur": ("blur",), "noise": ("noisy",)}.get(c, tuple(p for p in presets if p != "blur"))
        accuracy[c] = sum(counts[(c, p)] for p in good) / n
        cells = "".join(f"{counts[(c, p)]:>{width}}" for p in presets)
        lines.append(f"{c:<16}{cells}{n:>6}{accuracy[c]:>8.1%}")
    return "\n".join(lines), accuracy


def test_auto_picks_the_right_preset_for_each_class(labelled):
    report = []
    for title, names in (("all photos", TUNING + HELD_OUT), ("tuning", TUNING), ("held out", HELD_OUT)):
        table, accuracy = _confusion([r for r in labelled if r[0] in names])
        report.append(f"{title} ({', '.join(names)}):\n{table}")
        if title == "all photos":
            overall = accuracy
    text = "\n\n".join(report)
    print("\n" + text)
    wrong = [f"{c}: {a:.1%}" for c, a in overall.items() if a < 0.90]
    assert not wrong, "auto below 90% for " + ", ".join(wrong) + "\n" + text


def test_units_are_what_the_docs_say(labelled):
    # Calibrated noise: pure Gaussian noise reads its own sigma (no clipping, no content).
    rng = np.random.default_rng(0)
    for sigma in (2.0, 10.0, 25.0):
        flat = np.clip(0.5 + rng.normal(0, sigma / 255, (256, 256, 3)), 0, 1).astype(np.float32)
        assert analyse_image(flat).noise_sigma == pytest.approx(sigma, rel=0.08)
    clean = [d for n, v, c, s, d in labelled if c == "clean" and n in TUNING]
    blur2 = [d for n, v, c, s, d in labelled if c == "blur" and s == 2.0 and n in TUNING]
    blur35 = [d for n, v, c, s, d in labelled if c == "blur" and s == 3.5 and n in TUNING]
    # blur is the Gaussian sigma in input pixels: sigma s at 4x reads about s / 4.
    assert np.median([d.blur for d in clean]) < 0.1
    assert np.median([d.blur for d in blur2]) == pytest.approx(0.5, abs=0.05)
    assert np.median([d.blur for d in blur35]) == pytest.approx(0.875, abs=0.08)
    assert np.median([d.blockiness for d in clean]) == pytest.approx(1.0, abs=0.05)


def test_blur_survives_moderate_noise():
    """Noise is subtracted from the band energies: a blurred photo still reads blurred under noise."""
    hr = _photo("astronaut")
    sharp, blurred = _reduce4(hr), _reduce4(_blur(hr, 3.0))
    noisy_blurred = analyse_image(_noise(blurred, 10, seed=1)).blur
    assert analyse_image(blurred).blur == pytest.approx(noisy_blurred, abs=0.15)
    assert analyse_image(_noise(sharp, 10, seed=1)).blur < 0.3 < noisy_blurred


# -- input handling, bounded view, speed ---------------------------------------------------------------------


def test_input_types_agree():
    lr = _reduce4(_photo("coffee"))
    ref = analyse_image(lr)
    for other in (lr.astype(np.float32) / 255, lr.astype(np.float64) / 255, lr.astype(np.uint16) * 257):
        d = analyse_image(other)
        assert (d.noise_sigma, d.blur, d.blockiness) == pytest.approx(
            (ref.noise_sigma, ref.blur, ref.blockiness), rel=1e-4, abs=1e-4
        )
    rgba = np.concatenate([lr, np.full(lr.shape[:2] + (1,), 7, np.uint8)], axis=2)
    assert analyse_image(rgba) == ref
    grey = cv2.cvtColor(lr, cv2.COLOR_RGB2GRAY)
    assert analyse_image(grey) == analyse_image(np.repeat(grey[:, :, None], 3, axis=2))


def test_tiny_and_bad_inputs():
    assert analyse_image(np.zeros((8, 300, 3), np.uint8)) == Degradation(0.0, 0.0, 1.0)
    flat = analyse_image(np.full((64, 64, 3), 0.5, np.float32))  # no detail: blur cannot be measured
    assert flat.noise_sigma == 0.0 and math.isnan(flat.blur) and flat.blockiness == 1.0
    assert choose(flat, load_default_auto_rules()).preset == "default"
    for bad in ([[0.0]], np.zeros((4, 4, 3, 2)), np.zeros((32, 32, 2)), np.zeros((32, 32, 3), np.int64)):
        with pytest.raises(InputError):
            analyse_image(bad)
    nan = np.zeros((32, 32, 3), np.float32)
    nan[3, 3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        analyse_image(nan)


def _large(height: int, width: int) -> np.ndarray:
    tile = _reduce4(_photo("astronaut"))
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
    return np.ascontiguousarray(np.tile(tile, reps)[:height, :width])


def test_large_images_use_a_bounded_view_that_keeps_noise_and_the_jpeg_grid():
    from invsr_cli.settings import analyse as A

    crops = A._view(3000, 4000)
    assert sum(h * w for _, _, h, w in crops) <= 512 * 512
    assert all(y % 8 == 0 and x % 8 == 0 for y, x, _, _ in crops)
    assert A._view(100, 5000)[0][2] == 100 and len(A._view(100, 5000)) <= 16
    big = _large(1536, 2048)  # a 128x128 photo repeated: 16x the budget
    small = big[:512, :512]
    assert analyse_image(_noise(big, 20, seed=3)).noise_sigma == pytest.approx(20, rel=0.15)
    assert analyse_image(_jpeg(big, 30)).blockiness == pytest.approx(
        analyse_image(_jpeg(small, 30)).blockiness, rel=0.2
    )
    assert analyse_image(_jpeg(big, 30)).blockiness > 1.2


def test_benchmark_4000x3000():
    """Printed benchmark (goal < 50 ms on the dev machine); the assertion is only a loose sanity bound."""
    img = _noise(_large(3000, 4000), 5, seed=4)
    imgf = img.astype(np.float32) / 255
    for arr, kind in ((img, "uint8"), (imgf, "float32")):
        analyse_image(arr)  # warm-up
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            analyse_image(arr)
            times.append(time.perf_counter() - t0)
        ms = 1000 * float(np.median(times))
        print(f"\nanalyse_image 4000x3000 {kind}: median {ms:.1f} ms over 5 runs (goal < 50 ms)")
        assert ms < 2000


# -- the rule file ---------------------------------------------------------------------------------------------


def test_shipped_auto_preset():
    import importlib.resources

    text = (importlib.resources.files("invsr_cli") / "presets" / "auto.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert set(data) == {"description", "auto"} and isinstance(data["description"], str)
    rules = load_default_auto_rules()
    assert parse_auto_rules(data, "invsr_cli/presets/auto.yaml", known_presets=SHIPPED_PRESETS) == rules
    assert set(rules.presets) <= set(SHIPPED_PRESETS)
    assert rules.fallback == "default"
    assert [r.preset for r in rules.rules] == ["noisy", "blur", "blur"]
    assert all(r.why for r in rules.rules)


def test_choose_first_match_wins_and_bounds_are_half_open():
    rules = AutoRules(
        (
            Rule("noisy", (("noise_sigma", Bound(min=6.0)),)),
            Rule("blur", (("blur", Bound(min=0.3)), ("noise_sigma", Bound(max=6.0)))),
        ),
        "default",
    )
    assert choose(Degradation(6.0, 1.0, 1.0), rules) == Choice("noisy", 0, "rule 1: noise_sigma >= 6")
    assert choose(Degradation(5.9, 0.3, 1.0), rules).preset == "blur"
    assert choose(Degradation(5.9, 0.29, 1.0), rules) == Choice("default", None, "no rule matched: fallback")
    assert choose_preset(Degradation(0.0, math.nan, 1.0), rules) == "default"  # NaN never matches
    assert Bound(1.0, 2.0).holds(1.0) and not Bound(1.0, 2.0).holds(2.0)
    deg = Degradation(1.0, math.nan, 1.0)
    assert deg.as_dict() == {"noise_sigma": 1.0, "blur": None, "blockiness": 1.0}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(METRICS), st.floats(0, 40), st.floats(0, 40)), min_size=0, max_size=4),
    st.tuples(st.floats(0, 40), st.floats(0, 4), st.floats(0.5, 5)),
)
def test_choose_is_the_first_rule_whose_bounds_hold(specs, values):
    raw = [
        {"preset": f"p{i}", "when": {m: {"min": min(a, b), "max": max(a, b) + 0.5}}}
        for i, (m, a, b) in enumerate(specs)
    ]
    rules = parse_auto_rules({"auto": {"rules": raw, "fallback": "default"}}, "gen.yaml")
    deg = Degradation(*values)
    expected = next(
        (i for i, (m, a, b) in enumerate(specs) if min(a, b) <= getattr(deg, m) < max(a, b) + 0.5), None
    )
    got = choose(deg, rules)
    assert got.rule_index == expected
    assert got.preset == (f"p{expected}" if expected is not None else "default")


GOOD = {"rules": [{"preset": "noisy", "when": {"noise_sigma": {"min": 6}}}], "fallback": "default"}


def _with(path: str, value):
    """GOOD with one value replaced at a dotted/indexed path (value ... = delete the key)."""
    import copy

    data = {"description": "x", "auto": copy.deepcopy(GOOD)}
    keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
    node = data
    for k in keys[:-1]:
        node = node[k]
    if value is ...:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        (
            _with("auto.rules[0].when.blurr", {"min": 1}),
            "auto.rules[0].when.blurr",
            ["noise_sigma, blur, blockiness"],
        ),
        (
            _with("auto.rules[0].when.noise_sigma", {"min": 6, "max": 3}),
            "auto.rules[0].when.noise_sigma",
            ["min (6)", "max (3)"],
        ),
        (
            _with("auto.rules[0].when.noise_sigma", {"min": 6, "max": 6}),
            "auto.rules[0].when.noise_sigma",
            ["less than"],
        ),
        (
            _with("auto.rules[0].when.noise_sigma", {"minimum": 6}),
            "auto.rules[0].when.noise_sigma.minimum",
            ["min, max"],
        ),
        (_with("auto.rules[0].when.noise_sigma", {}), "auto.rules[0].when.noise_sigma", ["min, max"]),
        (
            _with("auto.rules[0].when.noise_sigma", 6),
            "auto.rules[0].when.noise_sigma",
            ["mapping", "min, max", "int"],
        ),
        (
            _with("auto.rules[0].when.noise_sigma", {"min": "6"}),
            "auto.rules[0].when.noise_sigma.min",
            ["number", "'6'"],
        ),
        (
            _with("auto.rules[0].when.noise_sigma", {"min": True}),
            "auto.rules[0].when.noise_sigma.min",
            ["number"],
        ),
        (
            _with("auto.rules[0].when.noise_sigma", {"min": float("nan")}),
            "auto.rules[0].when.noise_sigma.min",
            ["finite"],
        ),
        (
            _with("auto.rules[0].when", {}),
            "auto.rules[0].when",
            ["non-empty", "noise_sigma, blur, blockiness"],
        ),
        (_with("auto.rules[0].when", ...), "auto.rules[0].when", ["missing", "preset, when"]),
        (_with("auto.rules[0].preset", "nosiy"), "auto.rules[0].preset", ["'nosiy'", "default, fidelity"]),
        (_with("auto.rules[0].preset", "auto"), "auto.rules[0].preset", ["itself"]),
        (_with("auto.rules[0].preset", 3), "auto.rules[0].preset", ["preset name"]),
        (_with("auto.rules[0].if", {}), "auto.rules[0].if", ["preset, when, why"]),
        (_with("auto.rules[0].why", 5), "auto.rules[0].why", ["string"]),
        (_with("auto.rules[0]", "noisy"), "auto.rules[0]", ["mapping", "preset, when, why"]),
        (_with("auto.rules", {"a": 1}), "auto.rules", ["list"]),
        (_with("auto.fallback", ...), "auto.fallback", ["missing"]),
        (_with("auto.fallback", "nope"), "auto.fallback", ["'nope'", "perceptual"]),
        (_with("auto.order", "first"), "auto.order", ["rules, fallback"]),
        ({"description": "x", "auto": ["noisy"]}, "auto", ["mapping", "rules, fallback"]),
        ("just text", "auto", ["mapping"]),
    ],
)
def test_broken_rule_files_name_file_key_path_and_allowed_values(data, path, words):
    with pytest.raises(ConfigError) as err:
        parse_auto_rules(data, "presets/my-auto.yaml", known_presets=SHIPPED_PRESETS)
    msg = str(err.value)
    assert msg.startswith(f"presets/my-auto.yaml: {path}: "), msg
    for w in words:
        assert w in msg, msg


def test_rules_accept_the_section_alone_and_any_wellformed_preset_without_a_list():
    rules = parse_auto_rules(GOOD, "x.yaml")
    assert rules == AutoRules((Rule("noisy", (("noise_sigma", Bound(6.0, None)),)),), "default", "x.yaml")
    assert (
        parse_auto_rules({"auto": {**GOOD, "fallback": "my-own_preset2"}}, "x.yaml").fallback
        == "my-own_preset2"
    )


def test_analyse_reads_as_upscale_does_with_max_input_side(tmp_path):
    """`invsr analyse --max-input-side N` measures the reduced pixels upscale gives `auto` (area averaging lowers
    the noise it reads), not the file's full-size pixels."""
    from invsr_cli.commands.analyse import analyse_inputs
    from invsr_cli.settings.preset_files import load_policy
    from invsr_cli.work.inputs import read_input

    rng = np.random.default_rng(0)
    base = np.clip(128 + rng.normal(0, 12, (256, 256, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(base).save(tmp_path / "noisy.png")
    full_policy = load_policy("auto", {})
    small_policy = load_policy("auto", {"max_input_side": 64})
    full = analyse_inputs([str(tmp_path / "noisy.png")], full_policy.rules, read_settings=full_policy.settings)
    small = analyse_inputs([str(tmp_path / "noisy.png")], small_policy.rules, read_settings=small_policy.settings)
    assert full[0]["noise_sigma"] > 2 * small[0]["noise_sigma"]  # 4x4 area averaging: about a quarter the noise
    reduced, _ = read_input(tmp_path / "noisy.png", small_policy.settings)
    assert reduced.width == 64
    assert small[0]["noise_sigma"] == analyse_image(reduced.rgb).as_dict()["noise_sigma"]
