"""Reliability and security (issue 5): hostile inputs, crashes, signals, overlapping runs, full disks, out of
memory, path traversal, bad model outputs and untrusted weights. docs/RELIABILITY.md maps each guarantee to a test.

The subprocess tests run the real `invsr` executable on the tiny random models, with one torch thread
(``OMP_NUM_THREADS=1``: on a shared 2-core box torch's default thread pool spins and makes a tiny model 20x slower)
and a strict UTF-8 stdout (``PYTHONIOENCODING=utf-8:strict``, as under ``LANG=en_US.UTF-8``), so a report that
cannot carry a non-UTF-8 file name fails the test instead of passing under the C.UTF-8 locale's lenient stdout.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from invsr_cli.base.atomic import TEMP_SUFFIX
from invsr_cli.imaging.decode import read_image
from invsr_cli.run.lock import output_lock
from tests import imagegen
from tests.harness import (
    invsr,
    invsr_popen,
    json_lines,
    manifest_records,
    run_in_process,
    temps,
    text,
    tiny_settings,
)
from tests.hostile import build_corpus


def check_image(path, size) -> None:
    """``path`` decodes completely and is 4x ``size`` (width, height)."""
    with Image.open(path) as im:
        im.load()
        assert im.size == (4 * size[0], 4 * size[1]), (path, im.size, size)


def _folder(d: Path, n: int, w: int = 48, h: int = 40) -> dict[str, tuple[int, int]]:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        imagegen.rgb(d / f"img_{i:02d}.png", w, h, seed=i)
    return {f"img_{i:02d}.png": (w, h) for i in range(n)}


# -- 1. a corpus of hostile files ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_hostile_corpus(tmp_path, tiny_flags):
    corpus = build_corpus(tmp_path / "corpus", seed=5)
    root = corpus.root
    out = tmp_path / "out"
    # an output path that already exists as a folder: a per-file error
    imagegen.rgb(root / "good" / "collide_dir.png", 20, 12, seed=9)
    corpus.add(root / "good" / "collide_dir.png", "output-is-a-folder", "bad")
    (out / "good" / "collide_dir.png").mkdir(parents=True)
    n_bad = len(corpus.entries) - len(corpus.by_expect("good")) - len(corpus.by_expect("not_input"))
    assert n_bad >= 300 and len(corpus.by_expect("good")) >= 20

    start = time.perf_counter()
    p = invsr(["upscale", "-r", root, out, "--json", *tiny_flags], timeout=240)  # a hang fails here
    wall = time.perf_counter() - start
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 1, text(p)[-3000:]
    assert "Traceback" not in err, err[-3000:]
    objs = json_lines(p.stdout)
    summary = objs[-1]
    assert summary["type"] == "summary"
    outcomes = {os.fsencode(o["input"]): o for o in objs if o["type"] == "image"}
    assert len(outcomes) == sum(o["type"] == "image" for o in objs), "an input was reported twice"
    entries = {e.path: e for e in corpus.entries}
    unexpected = set(outcomes) - set(entries)
    assert not unexpected, f"outcomes for files not in the corpus: {sorted(unexpected)[:5]}"

    tally: Counter = Counter()
    slowest = 0.0
    for e in corpus.entries:
        o = outcomes.get(e.path)
        if e.expect == "not_input":
            assert o is None, o
            tally[(e.category, "not an input")] += 1
            continue
        assert o is not None, f"{e.path!r} ({e.category}) was never reported"
        if o["status"] == "done":
            assert e.expect in ("good", "maybe"), (e.category, o)
            size = e.size
            if size is None:  # a damaged file that still decodes: its output must be valid too
                w, h = Image.open(os.fsdecode(e.path)).size
                size = (w, h)
            check_image(os.fsdecode(os.fsencode(o["output"])), size)
            slowest = max(slowest, o["seconds"])
        else:
            assert o["status"] == "failed", o
            assert e.expect in ("bad", "maybe"), (e.category, o)
            assert o["reason"].strip(), o
            assert "\n" not in o["reason"], o
            if o["output"]:
                assert not os.path.isfile(os.fsencode(o["output"])), o
        tally[(e.category, o["status"])] += 1
    if corpus.by_expect("good"):
        assert {outcomes[e.path]["status"] for e in corpus.by_expect("good")} == {"done"}
    assert not temps(out)
    assert summary["processed"] + summary["failed"] == len(outcomes)
    assert slowest < 60  # each computed file bounded (the run as a whole by the timeout)

    print(f"\nhostile corpus: {len(corpus.entries)} entries ({n_bad} damaged/hostile, "
          f"{len(corpus.by_expect('good'))} good), run {wall:.1f} s, exit {p.returncode}")
    for category in sorted({c for c, _ in tally}):
        parts = ", ".join(f"{s} {tally[(category, s)]}" for s in ("done", "failed", "not an input")
                          if tally[(category, s)])
        print(f"  {category:<22} {parts}")
    damaged_ok = sum(n for (c, s), n in tally.items() if s == "done" and c not in ("good", "non-utf8-name-good"))
    failed = sum(n for (_, s), n in tally.items() if s == "failed")
    print(f"  => good written {len(corpus.by_expect('good'))} (incl. non-UTF-8 names), damaged-but-decodable "
          f"written {damaged_ok}, reported failed {failed}")
    for note in corpus.notes:
        print(f"  note: {note}")


def test_permission_denied_is_a_reason(tmp_path, monkeypatch, tiny_engine):
    """EACCES (emulated: the tests run as root, which reads mode-000 files) is a one-line reason; the batch goes on."""
    import invsr_cli.imaging.decode as imageio

    imagegen.rgb(tmp_path / "locked.png", 20, 12)
    imagegen.rgb(tmp_path / "ok.png", 20, 12, seed=1)
    real_open = open

    def fake_open(path, *a, **kw):
        if os.fspath(path).endswith("locked.png"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(imageio, "open", fake_open, raising=False)
    with pytest.raises(imageio.ImageReadError, match="locked.png: permission denied"):
        read_image(tmp_path / "locked.png")
    rec, summary = _run_in_process(tmp_path, ["locked.png", "ok.png"], tiny_engine)
    assert summary.failed == 1 and summary.processed == 1
    assert rec.status("locked.png") == ("failed", "permission denied")


# -- 2. crash safety: SIGKILL at random moments, then resume -------------------------------------------------------


def _complete_outputs(out: Path, sizes: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Every file under a final name decodes at 4x its input's size; -> {name: mtime_ns}."""
    found = {}
    if not out.exists():
        return found
    for f in out.iterdir():
        if f.name.startswith("."):  # the lock, the manifest, temporary files (.NAME.XXXX.invsr-tmp)
            assert f.name in (".invsr.lock", ".invsr-manifest.jsonl") or f.name.endswith(TEMP_SUFFIX), f
            continue
        assert f.name in sizes, f
        check_image(f, sizes[f.name])
        found[f.name] = f.stat().st_mtime_ns
    return found


def _run_and_kill(args, delay: float, *, after_first_done: bool, stderr_path: Path):
    """Start `invsr args`; SIGKILL it ``delay`` s after its start, or after its first new image (``--json``
    line with status done). -> (stdout bytes, return code, killed, stderr text)."""
    with open(stderr_path, "wb") as err:
        start = time.perf_counter()
        p = invsr_popen(args, stderr=err)
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, b"")), daemon=True)
        reader.start()
        anchor = start
        if after_first_done:
            deadline = start + 120
            while p.poll() is None and not any(b'"done"' in line for line in list(lines)):
                assert time.perf_counter() < deadline, "no image in 120 s"
                time.sleep(0.01)
            anchor = time.perf_counter()
        try:
            p.wait(timeout=max(anchor + delay - time.perf_counter(), 0.001))
            killed = False
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            killed = True
        p.wait(timeout=60)
        reader.join(timeout=60)
    return b"".join(lines), p.returncode, killed, stderr_path.read_text(errors="replace")


@pytest.mark.slow
def test_sigkill_crash_trials(tmp_path, tiny_flags):
    src = tmp_path / "in"
    sizes = _folder(src, 8)
    names = set(sizes)
    out = tmp_path / "out"
    args = ["upscale", src, out, "--json", *tiny_flags]

    # calibrate: when does the first image land, how long does each take after that
    start = time.perf_counter()
    p = invsr_popen(args)
    landed = [time.perf_counter() - start for line in p.stdout if b'"done"' in line]
    p.wait(timeout=120)
    t_end = time.perf_counter() - start
    assert p.returncode == 0 and len(landed) == len(names), p.stderr.read().decode(errors="replace")
    t_first = landed[0]
    per_image = max((landed[-1] - t_first) / (len(names) - 1), 0.02)
    shutil.rmtree(out)

    rng = random.Random(20261126)
    trials, outcomes, resumed_partial = 20, Counter(), 0
    complete: dict[str, int] = {}
    for trial in range(trials):
        if len(complete) == len(names):  # the set is finished: start a new one
            shutil.rmtree(out)
            complete = {}
        remaining = len(names) - len(complete)
        startup = trial % 4 == 0
        # a quarter of the kills during start-up or model loading (from the process start); the rest while images
        # are computed and written: after this run's first new image, within the time the rest would take
        delay = rng.uniform(0.3, t_first) if startup else rng.uniform(0.0, per_image * (remaining - 0.5))
        records_before = len(manifest_records(out))
        if 0 < len(complete) < len(names):
            resumed_partial += 1
        stdout, returncode, killed, stderr = _run_and_kill(args, delay, after_first_done=not startup,
                                                           stderr_path=tmp_path / f"stderr_{trial}.txt")
        if not killed:
            assert returncode == 0, stderr[-2000:]

        after = _complete_outputs(out, sizes)  # every final-name file is complete and valid
        for name, mtime in complete.items():  # finished files were neither lost nor recomputed
            assert after.get(name) == mtime, (trial, name)
        reported = {Path(o["output"]).name: o["status"] for o in json_lines(stdout) if o.get("type") == "image"}
        for name in complete:
            assert reported.get(name, "skipped") == "skipped", (trial, name, reported.get(name))
        new_records = manifest_records(out)[records_before:]
        assert not {Path(r["output"]).name for r in new_records if r["status"] == "done"} & set(complete), trial
        if not killed:
            assert set(after) == names
            assert {n for n, s in reported.items() if s == "done"} == names - set(complete)
        left = len(temps(out))
        outcomes["finished before the kill" if not killed else
                 "killed before any new output" if len(after) == len(complete) else
                 "killed mid-set"] += 1
        outcomes["temporary files left by the kill"] += left
        complete = after

    # the final re-run completes the set, doing only the unfinished files
    if len(complete) == len(names):
        shutil.rmtree(out)
        complete = {}
    before = dict(complete)
    records_before = len(manifest_records(out))
    out.mkdir(exist_ok=True)  # what a kill in the middle of a write leaves (the trials' writes are too short to hit)
    (out / f".img_00.png.0badf00d{TEMP_SUFFIX}").write_bytes(b"\x89PNG\r\n\x1a\n half an image")
    p = invsr(args, timeout=120)
    assert p.returncode == 0, text(p)[-2000:]
    assert "removed 1 temporary file(s) left by an interrupted run" in p.stderr.decode()
    objs = json_lines(p.stdout)
    reported = {Path(o["output"]).name: o["status"] for o in objs if o["type"] == "image"}
    assert {n for n, s in reported.items() if s == "skipped"} == set(before)
    assert {n for n, s in reported.items() if s == "done"} == names - set(before)
    new_done = {Path(r["output"]).name for r in manifest_records(out)[records_before:] if r["status"] == "done"}
    assert new_done == names - set(before)
    assert set(_complete_outputs(out, sizes)) == names
    assert not temps(out)  # the next run cleaned what the kills left
    assert resumed_partial >= 3, (resumed_partial, outcomes)
    print(f"\nSIGKILL crash trials: {trials} (full run {t_end:.1f} s, first image at {t_first:.1f} s, "
          f"{per_image:.2f} s/image); {dict(outcomes)}; runs resuming a partial set {resumed_partial}; "
          f"final re-run: skipped {len(before)}, done {len(names) - len(before)}")


# -- 3. SIGTERM / SIGINT -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_cleanly(tmp_path, tiny_flags, sig, code):
    src = tmp_path / "in"
    sizes = _folder(src, 10)
    out = tmp_path / "out"
    p = invsr_popen(["upscale", src, out, *tiny_flags])
    lines = []
    for line in p.stdout:  # wait for the first image: the run is then inside its signal handling
        lines.append(line.decode())
        if line.startswith(b"done"):
            break
    p.send_signal(sig)
    rest, err = p.communicate(timeout=60)
    lines += rest.decode().splitlines()
    assert p.returncode == code, err.decode(errors="replace")[-2000:]
    summary = [line for line in lines if line.startswith("summary:")]
    assert summary and f"(interrupted by {signal.Signals(sig).name})" in summary[-1], lines
    assert "Traceback" not in err.decode(errors="replace")
    done = _complete_outputs(out, sizes)
    assert 1 <= len(done) < len(sizes)  # it stopped early, after the writes in flight
    assert not temps(out)


@pytest.mark.slow
def test_sigterm_while_the_models_load_still_prints_the_summary(tmp_path, tiny_flags):
    """-v announces the load before it starts (torch and diffusers are imported inside it, seconds even for the
    tiny models): a SIGTERM then abandons the load, prints the summary and exits 143."""
    src = tmp_path / "in"
    _folder(src, 2)
    p = invsr_popen(["upscale", src, tmp_path / "out", "-v", *tiny_flags])
    for line in p.stderr:
        if line.startswith(b"loading the models"):
            break
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    err_text = err.decode(errors="replace")
    assert p.returncode == 143, err_text[-2000:]
    assert "stopping while the models load" in err_text and "Traceback" not in err_text
    assert "summary: processed 0" in out.decode() and "(interrupted by SIGTERM)" in out.decode()
    assert not list((tmp_path / "out").glob("*.png"))


@pytest.mark.slow
@pytest.mark.parametrize("presses", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_sigint_with_json_exits_130_after_the_summary_object(tmp_path, tiny_flags, presses):
    """Once: finish the writes in flight, then stop. Twice: abandon at once (a KeyboardInterrupt out of the run).
    Either way exit 130, the summary object last, no traceback."""
    src = tmp_path / "in"
    sizes = _folder(src, 10)
    p = invsr_popen(["upscale", src, tmp_path / "out", "--json", *tiny_flags])
    first = json.loads(p.stdout.readline())  # one image done: the run is inside its signal handling
    assert first["type"] == "image" and first["status"] == "done"
    for _ in range(presses):
        p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=60)
    objs = [first, *json_lines(rest)]
    assert p.returncode == 130, err.decode(errors="replace")[-2000:]
    assert objs[-1]["type"] == "summary" and objs[-1]["interrupted"] == "SIGINT", objs[-1]
    assert objs[-1]["processed"] == sum(o["type"] == "image" and o["status"] == "done" for o in objs) < len(sizes)
    assert "Traceback" not in err.decode(errors="replace")


@pytest.mark.slow
def test_stdout_closed_by_its_reader_ends_quietly(tmp_path, tiny_flags):
    """`invsr upscale ... --json | head -n 1`: no traceback, no "Exception ignored ... BrokenPipeError" at exit."""
    src = tmp_path / "in"
    sizes = _folder(src, 10)
    out = tmp_path / "out"
    p = invsr_popen(["upscale", src, out, "--json", *tiny_flags])
    first = json.loads(p.stdout.readline())
    p.stdout.close()  # what head does after its first line
    err = p.stderr.read().decode(errors="replace")
    assert p.wait(timeout=60) == 1, err[-2000:]  # the run stopped early: exit 1, as for a full disk
    assert first["type"] == "image"
    for noise in ("Traceback", "Exception ignored", "BrokenPipe", "Errno 32"):
        assert noise not in err, err[-2000:]
    assert 1 <= len(_complete_outputs(out, sizes)) < len(sizes)  # nobody listening: it stopped
    assert not temps(out)


# -- 4. exclusive runs --------------------------------------------------------------------------------------------


def _blocked_on_lock(pid: int) -> bool:
    try:
        return any("->" in line and f" {pid} " in line for line in Path("/proc/locks").read_text().splitlines())
    except OSError:
        return False


@pytest.mark.slow
def test_second_run_exits_75_or_waits(tmp_path, tiny_flags):
    imagegen.rgb(tmp_path / "a.png")
    out = tmp_path / "out"
    args = ["upscale", tmp_path / "a.png", out, *tiny_flags]
    with output_lock(out):
        p = invsr(args, timeout=240)
        assert p.returncode == 75, text(p)
        assert "another invsr run" in text(p) and "--wait" in text(p)
        assert not (out / "a.png").exists()
        waiting = invsr_popen([*args, "--wait"])
        deadline = time.monotonic() + 60
        while not _blocked_on_lock(waiting.pid) and waiting.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert waiting.poll() is None, "the --wait run did not wait"
        if Path("/proc/locks").exists():
            assert _blocked_on_lock(waiting.pid)
        assert not (out / "a.png").exists()
    stdout, stderr = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, stderr.decode(errors="replace")
    check_image(out / "a.png", (32, 24))


# -- in-process runs with a wrapped engine --------------------------------------------------------------------------


def _run_in_process(folder: Path, names, engine, out=None, **flags):
    """-> (the Collect reporter, the summary) of ``names`` in ``folder`` run with ``engine`` into ``folder/out``."""
    return run_in_process([folder / n for n in names], out or folder / "out", engine=engine,
                          settings=tiny_settings(**flags))


class WrappedEngine:
    """The tiny engine behind a fault injector: ``fault(lr)`` may raise or return a replacement output."""

    def __init__(self, inner, fault):
        self.inner, self.fault, self.device, self.calls = inner, fault, inner.device, []

    def upscale(self, lr, **kw):
        self.calls.append(tuple(lr.shape))
        replaced = self.fault(lr)
        if replaced is not None:
            return replaced
        return self.inner.upscale(lr, **kw)


def _oom(message="CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"):
    return torch.OutOfMemoryError(message)


@pytest.mark.slow
def test_disk_full_fails_the_file_and_stops_the_run(tmp_path, monkeypatch, tiny_engine):
    from invsr_cli.commands.cli import _exit_code

    names = [f"{i:02d}.png" for i in range(12)]
    for i, n in enumerate(names):
        imagegen.rgb(tmp_path / n, 32, 24, seed=i)
    real_fsync, temp_syncs = os.fsync, []

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if target.endswith(TEMP_SUFFIX):
            temp_syncs.append(target)
            if len(temp_syncs) >= 3:  # the disk fills up during the third write and stays full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rec, summary = _run_in_process(tmp_path, names, tiny_engine, batch_size=1)
    out = tmp_path / "out"
    failed = [o for o in rec.outcomes if o.status == "failed"]
    assert summary.stopped and "disk full" in summary.stopped
    assert "stopped early" in summary.line()
    assert _exit_code(summary) == 1
    tried = [o for o in failed if "No space left on device" in o.reason]
    never = [o for o in failed if o.reason == f"not attempted: {summary.stopped}"]
    assert tried and never and len(tried) + len(never) == len(failed)  # it stopped instead of trying every file
    assert sorted(Path(o.input).name for o in rec.outcomes) == names  # every input has its own line
    manifest = [json.loads(line) for line in (tmp_path / "out" / ".invsr-manifest.jsonl").read_text().splitlines()]
    assert sorted(Path(r["input"]).name for r in manifest) == names  # and its own record
    for o in failed:
        assert not Path(o.output).exists()
    assert not temps(out)
    written = sorted(f.name for f in out.glob("*.png"))
    assert written == sorted(Path(o.output).name for o in rec.outcomes if o.status == "done")
    for name in written:
        check_image(out / name, (32, 24))


@pytest.mark.slow
def test_out_of_memory_halves_the_batch(tmp_path, tiny_engine):
    for i in range(2):
        imagegen.rgb(tmp_path / f"{i}.png", 64, 48, seed=i)

    def fault(lr):
        if lr.shape[0] > 2:
            raise _oom()

    engine = WrappedEngine(tiny_engine, fault)
    rec, summary = _run_in_process(tmp_path, ["0.png", "1.png"], engine, batch_size=8)
    assert summary.processed == 2 and summary.failed == 0, rec.outcomes
    assert any("out of memory at batch 8" in w for w in rec.warnings), rec.warnings
    assert any("retrying with batch 2" in w for w in rec.warnings), rec.warnings
    assert max(c[0] for c in engine.calls[-3:]) <= 2
    for i in range(2):
        check_image(tmp_path / "out" / f"{i}.png", (64, 48))


def test_out_of_memory_at_batch_one_halves_the_tile(tmp_path, tiny_engine):
    """Two tiles of 128 in one batch, and the device only fits 64: batch 2 -> 1, then tile 128 -> 64. The other half
    of the split batch holds a tile of the image just re-planned: it must be dropped, not retried (a regression:
    retrying it failed the image at tile 64)."""
    imagegen.rgb(tmp_path / "wide.png", 200, 128, seed=3)

    def fault(lr):
        if lr.shape[-1] > 64:
            raise _oom()

    engine = WrappedEngine(tiny_engine, fault)
    rec, summary = _run_in_process(tmp_path, ["wide.png"], engine, batch_size=2, tile=128)
    assert summary.processed == 1 and summary.failed == 0, rec.outcomes
    assert any("out of memory at tile 128" in w and "retrying with tile 64" in w for w in rec.warnings), rec.warnings
    assert rec.outcomes[0].tiles > 2  # re-planned at 64
    check_image(tmp_path / "out" / "wide.png", (200, 128))


def test_out_of_memory_at_the_floor_fails_only_that_image(tmp_path, tiny_engine):
    imagegen.rgb(tmp_path / "a.png", 32, 24)

    def fault(lr):
        raise _oom()

    rec, summary = _run_in_process(tmp_path, ["a.png"], WrappedEngine(tiny_engine, fault), batch_size=1)
    assert summary.failed == 1
    assert "out of memory even at batch 1 and tile 32" in rec.outcomes[0].reason
    assert not (tmp_path / "out" / "a.png").exists()


# -- 5. output checks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "reason"), [("nan", "NaN/inf"), ("inf", "NaN/inf"), ("blank", "blank")])
def test_bad_model_output_is_not_written(tmp_path, tiny_engine, kind, reason):
    imagegen.rgb(tmp_path / "a.png", 32, 24)
    value = {"nan": float("nan"), "inf": float("inf"), "blank": 0.5}[kind]

    def fault(lr):
        out = torch.full((lr.shape[0], 3, 4 * lr.shape[2], 4 * lr.shape[3]), 0.5)
        if kind != "blank":
            out[:, :, 60:64, 60] = value  # a few bad values, inside the crop, are enough
        return out

    rec, summary = _run_in_process(tmp_path, ["a.png"], WrappedEngine(tiny_engine, fault))
    status, why = rec.status("a.png")
    assert status == "failed" and reason in why and "not written" in why
    assert not (tmp_path / "out" / "a.png").exists() and not temps(tmp_path / "out")


def test_blank_output_of_a_blank_input_is_fine(tmp_path, tiny_engine):
    Image.fromarray(np.full((24, 32, 3), 128, np.uint8)).save(tmp_path / "flat.png")

    def fault(lr):
        return torch.full((lr.shape[0], 3, 4 * lr.shape[2], 4 * lr.shape[3]), 0.5)

    rec, summary = _run_in_process(tmp_path, ["flat.png"], WrappedEngine(tiny_engine, fault))
    assert summary.processed == 1, rec.outcomes


# -- 6. outputs stay inside OUTPUT_DIR ------------------------------------------------------------------------------


def _tree(root: Path, skip: Path) -> set[str]:
    return {os.path.join(r, f) for r, ds, fs in os.walk(root) for f in fs if not r.startswith(str(skip))}


@pytest.mark.slow
def test_stdin_paths_cannot_escape_output_dir(tmp_path, tiny_flags):
    w = tmp_path / "w"
    cwd = w / "a" / "b"
    (cwd / "sub").mkdir(parents=True)
    (cwd / "inner").mkdir()
    (cwd / "link").mkdir()
    (w / "etc").mkdir()
    (tmp_path / "elsewhere").mkdir()
    outside = tmp_path / "outside_target"
    outside.mkdir()
    imagegen.rgb(w / "etc" / "x.png", 20, 12)
    imagegen.rgb(w / "a" / "b.png", 20, 12, seed=1)
    imagegen.rgb(tmp_path / "elsewhere" / "abs.png", 20, 12, seed=2)
    imagegen.rgb(cwd / "inner" / "y.png", 20, 12, seed=3)
    imagegen.rgb(cwd / "inner" / "z.png", 20, 12, seed=4)
    imagegen.rgb(cwd / "link" / "q.png", 20, 12, seed=5)
    out = cwd / "out"
    out.mkdir()
    os.symlink(outside, out / "link")  # a symlinked folder inside OUTPUT_DIR pointing outside it
    before = _tree(tmp_path, out)
    listing = "\n".join(["../../etc/x.png", "sub/../../b.png", str(tmp_path / "elsewhere" / "abs.png"),
                         "./inner/y.png", "inner/../inner/z.png", "link/q.png"]) + "\n"
    p = invsr(["upscale", "-", "out", "--json", *tiny_flags], cwd=cwd, stdin=listing.encode(), timeout=240)
    assert p.returncode == 1, text(p)
    objs = {o["input"]: o for o in json_lines(p.stdout) if o["type"] == "image"}
    assert objs["link/q.png"]["status"] == "failed" and "outside OUTPUT_DIR" in objs["link/q.png"]["reason"]
    done = {o["output"] for o in objs.values() if o["status"] == "done"}
    assert done == {"out/x.png", "out/b.png", "out/abs.png", "out/inner/y.png", "out/z.png"}, objs
    for rel in done:
        assert os.path.realpath(cwd / rel).startswith(str(out.resolve()) + os.sep)
    assert not any(outside.iterdir())
    assert _tree(tmp_path, out) == before  # nothing new anywhere outside OUTPUT_DIR


# -- 7. untrusted weights, through the CLI -------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.slow
def test_pickle_checkpoint_with_code_is_refused_by_the_cli(tmp_path, tiny_models):
    """The library-level proof (including that a plain unpickle WOULD run the payload) is
    tests/test_noise_predictor.py::test_pickle_with_code_is_refused_without_running_it."""
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"encoder.conv_in.weight": _Payload(marker)}, f, protocol=2)
    imagegen.rgb(tmp_path / "a.png")
    p = invsr(["upscale", tmp_path / "a.png", tmp_path / "out", "--sd-model", tiny_models.sd_dir,
             "--noise-predictor", evil, "--device", "cpu"], timeout=240)
    assert p.returncode == 3, text(p)
    assert "evil.pth" in text(p) and "Traceback" not in text(p)
    assert not marker.exists()
    assert not (tmp_path / "out" / "a.png").exists()
