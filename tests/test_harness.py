"""The harness itself (tests/harness.py) and the conftest's guard: what the other tests lean on, in process."""

from __future__ import annotations

import json
import subprocess

import pytest

from invsr_cli.base.atomic import TEMP_SUFFIX
from tests import conftest
from tests.harness import ENV, json_lines, manifest_records, model_flags, subprocess_env, temps, tiny_settings


def test_a_process_started_by_a_test_not_marked_slow_is_refused_and_remembered(request):
    assert request.node.get_closest_marker("slow") is None
    with pytest.raises(RuntimeError, match="starts a process .* not marked slow: mark it @pytest.mark.slow"):
        subprocess.run(["true"])
    assert conftest._guard["started"] == ["subprocess"]
    conftest._guard["started"].clear()  # this test provoked it on purpose: let its own teardown pass


@pytest.mark.slow
def test_a_slow_test_may_start_one():
    assert subprocess.run(["true"]).returncode == 0


def test_model_flags_point_at_the_tiny_models_and_match_tiny_settings(tiny_models, tiny_flags):
    assert tiny_flags == model_flags(tiny_models)
    flags = dict(zip(tiny_flags[::2], tiny_flags[1::2], strict=True))
    assert flags == {"--sd-model": str(tiny_models.sd_dir), "--noise-predictor": str(tiny_models.noise_predictor_path),
                     "--device": "cpu", "--tile": "32", "--overlap": "8"}
    assert "--device" not in model_flags(tiny_models, device=None)
    s = tiny_settings(tiny_models, steps=2)
    assert (s.sd_model, s.device, s.tile, s.overlap, s.steps) == (str(tiny_models.sd_dir), "cpu", 32, 8, 2)


def test_the_subprocess_environment_is_offline_one_thread_and_strict(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    env = subprocess_env({"HF_HOME": "/nowhere"})
    assert {k: env[k] for k in ENV} == ENV and env["HF_HOME"] == "/nowhere"
    assert ENV["HF_HUB_OFFLINE"] == "1" and ENV["OMP_NUM_THREADS"] == "1"


def test_manifest_records_reads_every_manifest_and_skips_a_cut_line_unless_strict(tmp_path):
    (tmp_path / ".invsr-manifest.jsonl").write_text(json.dumps({"input": "a", "status": "done"}) + "\n")
    (tmp_path / ".invsr-manifest.shard-0-of-2.jsonl").write_text(json.dumps({"input": "b"}) + '\n{"input": "c", "st')
    (tmp_path / "other.jsonl").write_text(json.dumps({"input": "not a manifest"}) + "\n")
    assert sorted(r["input"] for r in manifest_records(tmp_path)) == ["a", "b"]
    with pytest.raises(ValueError):
        manifest_records(tmp_path, strict=True)
    assert manifest_records(tmp_path / "empty") == []


def test_json_lines_and_temps(tmp_path):
    assert json_lines(b'{"a": 1}\nnot json\n{"b": 2}') == [{"a": 1}, {"b": 2}]
    (tmp_path / "sub").mkdir()
    left = tmp_path / "sub" / f".x.png.0123abcd{TEMP_SUFFIX}"
    left.write_bytes(b"")
    (tmp_path / "x.png").write_bytes(b"")
    assert temps(tmp_path) == [str(left)]
