"""Run settings and image settings apart (issue 16, item 2): two frozen objects resolved together, a policy that
chooses only image settings, auto presets that may not set run keys, and manifests of earlier runs still valid."""

from __future__ import annotations

import json
import pickle
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import pytest
import torch

from invsr_cli.base.errors import ConfigError
from invsr_cli.run.discover import discover
from invsr_cli.run.manifest import MANIFEST_NAME, input_stamp
from invsr_cli.run.runner import run_batch, run_fingerprint
from invsr_cli.settings.preset_files import load_policy
from invsr_cli.settings.settings import (
    DEFAULTS,
    IMAGE_KEYS,
    KEYS,
    PRESET_KEYS,
    RUN_KEYS,
    ImageSettings,
    RunSettings,
    Settings,
    resolve_settings,
)
from invsr_cli.work.report import Reporter
from tests import imagegen

MODELS = {"sd_model": "x", "noise_predictor": "y"}  # a fixed model identity, so whole fingerprints are constants

# run_fingerprint(load_policy(preset, flags), MODELS) as the code before the split computed it (main at 9a289c0):
# a manifest written then must still make its outputs up to date. The two auto values are recorded after one fix:
# before it, an auto fingerprint hashed the absolute path of the auto.yaml it was read from (so every other
# install place made every auto output stale, and no value could be recorded for all checkouts).
RECORDED = [
    (None, {}, "b03aa2659a791658-a4627670bc7b21b6"),
    (None, {"tile": 64, "overlap": 16, "max_input_side": 100, "format": "png", "suffix": "_x", "steps": 2},
     "3147a3f526b079c5-a4627670bc7b21b6"),
    ("auto", {}, "auto-e6198397954db013-a4627670bc7b21b6"),
    ("auto", {"tile": 64, "overlap": 16, "lossless": True, "width": 300, "passes": 2},
     "auto-fdce99ef8e21517e-a4627670bc7b21b6"),
    ("large", {"seed": 3}, "ae09960623d64d22-a4627670bc7b21b6"),
]


class NearestEngine:
    """Stands in for the model: x4 nearest-neighbour, with a fixed identity (no weights needed)."""

    device = torch.device("cpu")
    identity = MODELS

    def upscale(self, lr, **kw):
        return lr.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)


def test_the_keys_split_into_run_and_image_and_users_see_the_same_set():
    assert set(RUN_KEYS).isdisjoint(IMAGE_KEYS)
    assert set(RUN_KEYS) | set(IMAGE_KEYS) == set(KEYS)
    assert set(PRESET_KEYS) - {"steps"} == set(KEYS) - {"preset"}  # every preset key is one of the two
    assert {"device", "dtype", "sd_model", "noise_predictor", "batch_size", "suffix", "format", "max_pixels",
            "max_input_side", "skip_if_larger", "first_frame"} <= set(RUN_KEYS)
    assert {"timesteps", "guidance", "posterior", "seed", "tile", "overlap", "blend", "scale", "width", "fit",
            "passes", "quality", "color_fix"} <= set(IMAGE_KEYS)
    assert list(DEFAULTS.to_dict()) == [*KEYS, "steps"]  # the records' keys, in their old order


def test_resolve_returns_a_frozen_pair_that_reads_flat():
    s = resolve_settings(None, {"tile": 64, "overlap": 16, "device": "cpu", "suffix": "_x", "fit": "80x60"})
    assert isinstance(s.run, RunSettings) and isinstance(s.image, ImageSettings)
    assert (s.run.device, s.run.suffix, s.image.tile, s.image.fit) == ("cpu", "_x", 64, (80, 60))
    assert (s.device, s.tile, s.steps) == ("cpu", 64, 1)  # the flat view
    for obj, key in ((s, "run"), (s.run, "device"), (s.image, "tile")):
        with pytest.raises(FrozenInstanceError):
            setattr(obj, key, None)
    assert Settings(**{k: v for k, v in s.to_dict().items() if k != "steps"}) == s
    assert Settings(s.run, s.image) == s and replace(s, tile=32).image.tile == 32
    assert pickle.loads(pickle.dumps(s)) == s  # the --devices workers and Ray get it pickled
    with pytest.raises(AttributeError):
        s.no_such_key  # noqa: B018


def test_a_policy_chooses_image_settings_only():
    fixed = load_policy(None, {"tile": 64, "overlap": 16, "device": "cpu"})
    assert fixed.run.device == "cpu" and fixed.for_image(None).image.tile == 64
    auto = load_policy("auto", {"tile": 64, "overlap": 16, "suffix": "_x"})
    assert auto.run.suffix == "_x"
    assert all(isinstance(c, ImageSettings) for c in auto.choices.values())
    assert {k: c.timesteps for k, c in auto.choices.items()} == {
        "noisy": (200,), "blur": (250, 200, 150, 100, 50), "default": (200,)}
    assert all(c.tile == 64 and c.preset == k for k, c in auto.choices.items())
    from invsr_cli.settings.auto_rules import AutoPolicy

    assert isinstance(auto, AutoPolicy) and not hasattr(auto, "settings")


def _user_presets(tmp_path, monkeypatch, files: dict[str, str]) -> Path:
    folder = tmp_path / "config" / "invsr" / "presets"
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return folder


AUTO = "auto:\n  rules:\n    - preset: sharp\n      when: {noise_sigma: {min: 5}}\n  fallback: default\n"


@pytest.mark.parametrize("key, value", [("suffix", "_sharp"), ("max_pixels", 1000), ("device", "cpu"),
                                        ("max_input_side", 64), ("format", "webp")])
def test_an_auto_chosen_preset_that_sets_a_run_key_is_refused_naming_its_file_and_the_key(
        tmp_path, monkeypatch, key, value):
    """Before the split the run key was silently ignored (the run's own value was used): now loading the auto
    preset fails, naming the chosen preset's file and the key."""
    folder = _user_presets(tmp_path, monkeypatch, {
        "myauto.yaml": AUTO, "sharp.yaml": f"timesteps: [150]\n{key}: {value}\n"})
    with pytest.raises(ConfigError) as e:
        load_policy("myauto", {})
    msg = str(e.value)
    assert str(folder / "sharp.yaml") in msg and f"`{key}`" in msg and str(folder / "myauto.yaml") in msg
    assert "\n" not in msg and "timesteps" in msg  # one line, saying which keys such a preset may set


def test_the_fallback_preset_is_checked_too_and_image_keys_are_fine(tmp_path, monkeypatch):
    folder = _user_presets(tmp_path, monkeypatch, {"default.yaml": "timesteps: [200]\nsuffix: _up\n"})
    with pytest.raises(ConfigError, match=r"default\.yaml.*`suffix`"):
        load_policy("auto", {})
    (folder / "default.yaml").write_text("timesteps: [150]\ntile: 64\noverlap: 16\nquality: 80\n")
    policy = load_policy("auto", {})
    assert policy.choices["default"].timesteps == (150,) and policy.choices["default"].quality == 80
    # a plain run with that preset may set run keys as it always could
    (folder / "default.yaml").write_text("suffix: _up\nmax_pixels: 1000\n")
    assert load_policy(None, {}).run.suffix == "_up"


@pytest.mark.parametrize("preset, flags, expected", RECORDED)
def test_fingerprints_are_those_of_before_the_split(preset, flags, expected):
    assert run_fingerprint(load_policy(preset, flags), MODELS) == expected


def test_an_auto_fingerprint_does_not_depend_on_where_the_rules_file_lies():
    from dataclasses import replace

    policy = load_policy("auto", {})
    moved = replace(policy, rules=replace(policy.rules, source="/elsewhere/presets/auto.yaml"))
    assert moved.rules.source != policy.rules.source
    assert moved.fingerprint() == policy.fingerprint()


@pytest.mark.parametrize("preset, flags, expected", [RECORDED[1], RECORDED[2]])
def test_a_manifest_written_before_the_split_still_makes_outputs_up_to_date(tmp_path, preset, flags, expected):
    """A manifest line exactly as the code before the split wrote it (its keys, its settings dict): skip-existing
    keeps the output instead of recomputing it."""
    (tmp_path / "in").mkdir()
    imagegen.rgb(tmp_path / "in" / "a.png", 24, 16, seed=1)
    policy = load_policy(preset, flags)
    (job,) = discover([str(tmp_path / "in")], tmp_path / "out", suffix=policy.run.suffix,
                      fmt=policy.run.format).jobs
    job.output.parent.mkdir(parents=True)
    job.output.write_bytes(b"made before")
    old_settings = {"timesteps": [200], "guidance": 1.0, "posterior": "sample", "seed": 0, "color_fix": "none",
                    "tile": 128, "overlap": 32, "blend": "gaussian", "batch_size": "auto", "scale": 4.0,
                    "device": "auto", "dtype": "auto", "vae_fp32": False, "compile": False,
                    "sd_model": "stabilityai/sd-turbo", "noise_predictor": None, "format": "auto", "quality": 95,
                    "suffix": "", "skip_existing": True, "max_pixels": 8000000, "lossless": False,
                    "strip_metadata": False, "provenance": True, "width": None, "height": None, "fit": None,
                    "long_side": None, "short_side": None, "passes": 1, "max_input_side": None,
                    "skip_if_larger": None, "first_frame": False, "preset": "default", "steps": 1}
    record = {"time": "2026-12-01T10:00:00+0000", "input": str(job.input), "output": str(job.output),
              "status": "done", "reason": "", "seconds": 1.0, "width": 96, "height": 64, "tiles": 1,
              "preset": "default", "timesteps": [200], "tile": 128, "overlap": 32, "batch_sizes": [1],
              "passes": 1, "frames": 1, "fingerprint": expected, "settings": old_settings, "models": MODELS,
              **input_stamp(job.input)}
    (tmp_path / "out" / MANIFEST_NAME).write_text(json.dumps(record) + "\n")
    summary = run_batch([job], policy, output_dir=tmp_path / "out", reporter=Reporter(), engine=NearestEngine(),
                        handle_signals=False)
    assert (summary.skipped, summary.processed) == (1, 0)
    assert summary.outcomes[0].reason == "up to date"
    assert job.output.read_bytes() == b"made before"


def test_each_outcome_carries_the_run_and_its_image_settings(tmp_path):
    (tmp_path / "in").mkdir()
    imagegen.rgb(tmp_path / "in" / "a.png", 24, 16, seed=1)
    policy = load_policy(None, {"tile": 16, "overlap": 4, "suffix": "_x", "long_side": 48})
    jobs = discover([str(tmp_path / "in")], tmp_path / "out", suffix="_x").jobs
    summary = run_batch(jobs, policy, output_dir=tmp_path / "out", reporter=Reporter(), engine=NearestEngine(),
                        handle_signals=False)
    (o,) = summary.outcomes
    assert o.status == "done" and (o.width, o.height) == (48, 32)
    assert o.settings.run is policy.run and o.settings.image is policy.settings.image
    (rec,) = [json.loads(line) for line in (tmp_path / "out" / MANIFEST_NAME).read_text().splitlines()]
    assert rec["settings"] == policy.settings.to_dict() and rec["settings"]["suffix"] == "_x"
