"""Run manifest (JSON lines, crash-tolerant) and the output-folder lock."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from invsr_cli.base.errors import LockedError
from invsr_cli.run.lock import output_lock
from invsr_cli.run.manifest import Manifest, input_stamp


def test_manifest_round_trip_and_staleness(tmp_path):
    src, out = tmp_path / "a.png", tmp_path / "out" / "a.png"
    src.write_bytes(b"x")
    out.parent.mkdir()
    out.write_bytes(b"y")
    m = Manifest(tmp_path / "m.jsonl")
    assert m.is_up_to_date(src, out, "fp1") is None  # nothing known
    m.append({"input": str(src), "output": str(out), "status": "done", "fingerprint": "fp1", **input_stamp(src)})
    m2 = Manifest(tmp_path / "m.jsonl")  # re-read from disk
    assert m2.is_up_to_date(src, out, "fp1") is True
    assert m2.is_up_to_date(src, out, "fp2") is False  # other settings
    time.sleep(0.01)
    src.write_bytes(b"changed")
    assert m2.is_up_to_date(src, out, "fp1") is False  # changed input
    out.unlink()
    assert m2.is_up_to_date(src, out, "fp1") is None  # output gone: recompute


def test_manifest_survives_a_line_cut_short_by_a_crash(tmp_path):
    path = tmp_path / "m.jsonl"
    good = {"input": "a", "output": "/o/a.png", "status": "done"}
    path.write_text(json.dumps(good) + "\n" + '{"input": "b", "output": "/o/b.png", "sta')
    m = Manifest(path)
    assert m.lookup(tmp_path / "nothing") is None
    assert m.lookup(type(tmp_path)("/o/a.png"))["status"] == "done"
    m.append({"input": "c", "output": "/o/c.png", "status": "failed"})
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["output"] == "/o/c.png"  # the new record starts on its own line
    assert Manifest(path).lookup(type(tmp_path)("/o/c.png"))["status"] == "failed"


@pytest.mark.slow
def test_second_lock_holder_is_refused_then_admitted(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from invsr_cli.run.lock import output_lock\n"
         "with output_lock(Path(sys.argv[1])):\n print('held', flush=True); time.sleep(30)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"pid {holder.pid}.*--wait"), output_lock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(tmp_path):  # the lock died with its holder
        pass

