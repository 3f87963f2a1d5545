"""Scaling out (issue 11): ``--devices`` (a worker process per device) and ``--shard`` (stable hash shards sharing
one output folder). Every executor must give every input exactly one done or failed record, write byte-identical
outputs, survive a worker dying mid-image, and resume from the manifests after the driver is killed.

CPU only: ``--devices cpu,cpu`` runs two CPU workers on the tiny random models. Subprocess runs use one torch
thread per process (``OMP_NUM_THREADS=1``, see tests/test_reliability.py).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path, PurePosixPath

import pytest
import torch

from invsr_cli.base.atomic import TEMP_SUFFIX, remove_temps_of
from invsr_cli.base.errors import ConfigError, LockedError
from invsr_cli.run.discover import discover
from invsr_cli.run.executors.devices import DevicesExecutor, parse_devices
from invsr_cli.run.lock import output_lock
from invsr_cli.run.manifest import Manifest, folder_manifests
from invsr_cli.run.runner import run_batch
from invsr_cli.run.shard import Shard, parse_shard, resolve_shard, shard_from_env, shard_of
from invsr_cli.work.report import Reporter
from tests import imagegen
from tests.faults import exit_on_write
from tests.harness import (
    invsr,
    invsr_popen,
    manifest_records,
    model_flags,
    subprocess_env,
    temps,
    tiny_settings,
)
from tests.threads import torch_threads


def _env(extra=None) -> dict[str, str]:
    """The harness's environment without this shell's SLURM_ variables (they would pick a shard)."""
    env = subprocess_env(extra)
    for k in [k for k in env if k.startswith("SLURM_")]:
        if k not in (extra or {}):
            del env[k]
    return env


def _inputs(src: Path, n: int = 6, *, corrupt: bool = True) -> list[str]:
    src.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):  # sizes differ, so the largest-first order differs from the listing order
        names.append(imagegen.rgb(src / f"img_{i:02d}.png", 20 + 12 * ((i * 5) % n), 12 + 4 * i, seed=i).name)
    if corrupt:
        (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        names.append("broken.png")
    return names


@pytest.fixture(scope="module")
def models(tiny_models):
    """The tiny models' flags without --device (these runs choose --devices)."""
    return model_flags(tiny_models, device=None)


@pytest.fixture(scope="module")
def settings(tiny_models):
    return tiny_settings(tiny_models)


# -- shards: pure --------------------------------------------------------------------------------------------------


def test_shard_parsing_and_slurm():
    assert parse_shard("1/4") == Shard(1, 4)
    assert str(parse_shard(" 0/1 ")) == "0/1" and parse_shard("2/3").tag == "shard-2-of-3"
    for bad in ("4/4", "1/0", "-1/2", "1", "a/b", "1/2/3", ""):
        with pytest.raises(ConfigError, match="shard"):
            parse_shard(bad)
    slurm = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    s = shard_from_env(slurm)
    assert (s.index, s.count) == (2, 4) and "SLURM_ARRAY_TASK_ID=7" in s.source
    s = shard_from_env({**slurm, "SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1",
                        "SLURM_ARRAY_TASK_STEP": "2"})  # --array=1-7:2 -> tasks 1,3,5,7
    assert (s.index, s.count) == (3, 4)
    with pytest.raises(ConfigError, match="shard"):  # 9 is past a 4-task array
        shard_from_env({**slurm, "SLURM_ARRAY_TASK_ID": "9"})
    assert shard_from_env({}) is None and shard_from_env({"SLURM_JOB_ID": "3"}) is None
    assert resolve_shard("0/2", slurm) == Shard(0, 2)  # the flag wins over the environment
    assert resolve_shard(None, slurm).index == 2


def test_shards_are_disjoint_complete_and_stable():
    rels = [PurePosixPath(f"d{i % 7}/sub/img_{i:04d}.png") for i in range(2000)]
    for n in (1, 2, 3, 8):
        parts = [{r for r in rels if Shard(i, n).holds(r)} for i in range(n)]
        assert sum(len(p) for p in parts) == len(rels) and set().union(*parts) == set(rels)  # disjoint, complete
        if n > 1:
            assert min(len(p) for p in parts) > len(rels) / n * 0.8  # and roughly even
    # Stable: by the path alone, so more files elsewhere (or another listing order) move nothing.
    before = {r: shard_of(r, 4) for r in rels}
    more = rels + [PurePosixPath(f"new/{i}.png") for i in range(500)]
    assert all(shard_of(r, 4) == before[r] for r in reversed(more) if r in before)
    assert shard_of("a/b.png", 4) == shard_of(PurePosixPath("a/b.png"), 4)
    # The documented hash: one that changed between versions would silently re-shard a running array.
    import hashlib

    assert shard_of("x/y.png", 5) == int.from_bytes(hashlib.sha256(b"x/y.png").digest()[:8], "big") % 5


def test_every_manifest_in_the_folder_is_read(tmp_path):
    a, b = tmp_path / "out" / "a.png", tmp_path / "out" / "b.png"
    a.parent.mkdir()
    Manifest(tmp_path / "out" / ".invsr-manifest.shard-0-of-2.jsonl").append({"output": str(a), "status": "done"})
    time.sleep(0.01)
    Manifest(tmp_path / "out" / ".invsr-manifest.shard-1-of-2.jsonl").append({"output": str(b), "status": "done"})
    (tmp_path / "out" / "unrelated.jsonl").write_text('{"output": "x"}\n')
    found = folder_manifests(tmp_path / "out")
    assert [p.name for p in found] == [".invsr-manifest.shard-0-of-2.jsonl", ".invsr-manifest.shard-1-of-2.jsonl"]
    own = tmp_path / "out" / ".invsr-manifest.jsonl"
    m = Manifest(own, also_read=found)
    assert m.lookup(a)["status"] == "done" and m.lookup(b)["status"] == "done"
    m.append({"output": str(a), "status": "failed"})  # appends go to its own file only; the latest record wins
    assert Manifest(own, also_read=folder_manifests(tmp_path / "out")).lookup(a)["status"] == "failed"
    assert "failed" not in found[0].read_text()


def test_shard_locks_exclude_plain_runs_and_twins_not_each_other(tmp_path):
    with output_lock(tmp_path, shared=True), output_lock(tmp_path, name=".invsr.shard-0-of-2.lock"):
        with output_lock(tmp_path, shared=True), output_lock(tmp_path, name=".invsr.shard-1-of-2.lock"):
            pass  # another shard runs alongside
        with pytest.raises(LockedError, match="another invsr run"):
            with output_lock(tmp_path):  # a plain run waits for the shards
                pass
        with pytest.raises(LockedError):
            with output_lock(tmp_path, name=".invsr.shard-0-of-2.lock"):  # the same shard twice
                pass
    with output_lock(tmp_path):
        with pytest.raises(LockedError):
            with output_lock(tmp_path, shared=True):
                pass


def test_remove_temps_of_only_touches_the_given_outputs(tmp_path):
    mine = tmp_path / "a.png"
    (tmp_path / f".a.png.0123abcd{TEMP_SUFFIX}").write_bytes(b"x")
    (tmp_path / f".b.png.0123abcd{TEMP_SUFFIX}").write_bytes(b"x")
    (tmp_path / f".a.png.extra.0123abcd{TEMP_SUFFIX}").write_bytes(b"x")  # a temp of an output "a.png.extra"
    assert remove_temps_of([mine]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".a.png.extra.0123abcd{TEMP_SUFFIX}",
                                                          f".b.png.0123abcd{TEMP_SUFFIX}"]


def test_parse_devices():
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    assert parse_devices("cuda:0, cuda:1,cuda") == ["cuda:0", "cuda:1", "cuda:0"]
    assert parse_devices("all", count_cuda=lambda: 3) == ["cuda:0", "cuda:1", "cuda:2"]
    with pytest.raises(ConfigError, match="no CUDA device"):
        parse_devices("all", count_cuda=lambda: 0)
    for bad in ("gpu", "cuda:x", "cpu,", "auto"):
        with pytest.raises(ConfigError, match="devices"):
            parse_devices(bad)


# -- executors: same bytes, exactly once ----------------------------------------------------------------------------


@pytest.mark.slow
def test_same_bytes_and_exactly_once_across_executors(tmp_path, settings, tiny_engine):
    """The single-process run, ``--devices cpu,cpu`` and two shards into one folder write byte-identical files
    and one done-or-failed record per input; a re-run of a shard skips everything (it reads every manifest)."""
    src = tmp_path / "in"
    names = _inputs(src)
    found = discover([str(src)], tmp_path / "unused")

    def jobs(out: Path):
        return discover([str(src)], out).jobs

    outs = {k: tmp_path / k for k in ("single", "devices", "shards")}
    devices = DevicesExecutor(["cpu", "cpu"], threads=1)
    with torch_threads(1):  # the workers' arithmetic (tests/threads.py says why it matters)
        single = run_batch(jobs(outs["single"]), settings, output_dir=outs["single"], engine=tiny_engine,
                           handle_signals=False)
        shard_summaries = [run_batch(jobs(outs["shards"]), settings, output_dir=outs["shards"], engine=tiny_engine,
                                     handle_signals=False, shard=Shard(i, 2)) for i in range(2)]
    summaries = {"single": single,
                 "devices": run_batch(jobs(outs["devices"]), settings, output_dir=outs["devices"],
                                      executor=devices, handle_signals=False)}
    assert not torch.cuda.is_initialized()  # the parent of the workers never touched CUDA
    assert len(found.jobs) == len(names)
    for i, s in enumerate(shard_summaries):  # each shard took only its own inputs
        assert {Path(o.input).name for o in s.outcomes} == {n for n in names if Shard(i, 2).holds(n)}

    reference = {p.name: p.read_bytes() for p in outs["single"].glob("*.png")}
    assert set(reference) == set(names) - {"broken.png"}
    for kind in ("devices", "shards"):
        got = {p.name: p.read_bytes() for p in outs[kind].glob("*.png")}
        assert got.keys() == reference.keys(), kind
        assert [n for n in got if got[n] != reference[n]] == [], f"{kind}: not byte-identical"
        assert not temps(outs[kind])
    for kind, out in outs.items():
        recs = manifest_records(out)
        per_input = Counter(Path(r["input"]).name for r in recs)
        assert per_input == Counter(names), (kind, per_input)  # exactly once
        status = {Path(r["input"]).name: r["status"] for r in recs}
        assert status.pop("broken.png") == "failed" and set(status.values()) == {"done"}, kind
    assert sorted(p.name for p in folder_manifests(outs["shards"])) == [
        ".invsr-manifest.shard-0-of-2.jsonl", ".invsr-manifest.shard-1-of-2.jsonl"]
    assert summaries["devices"].processed == summaries["single"].processed == len(names) - 1
    assert devices.cost["images"] == len(names) and 0 < devices.cost["worker_seconds"] < 5  # the workers' tally

    again = run_batch(jobs(outs["shards"]), settings, output_dir=outs["shards"], engine=tiny_engine,
                      handle_signals=False)  # unsharded, over both shards' manifests
    assert again.processed == 0 and again.skipped == len(names) - 1
    assert {o.reason for o in again.outcomes if o.status == "skipped"} == {"up to date"}


def _disk_fills_loader(settings):
    """Runs in each worker (so it is module-level: picklable): the disk "fills up" at the worker's third write
    and stays full (ENOSPC from fsync, as tests/test_reliability.py injects it in one process)."""
    import errno

    from invsr_cli.run.executors import load_engine

    real, temp_syncs = os.fsync, []

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if target.endswith(TEMP_SUFFIX):
            temp_syncs.append(target)
            if len(temp_syncs) >= 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    os.fsync = fsync
    return load_engine(settings)


@pytest.mark.slow
def test_disk_full_on_a_worker_stops_the_run_and_every_input_has_one_outcome(tmp_path, settings):
    src = tmp_path / "in"
    names = _inputs(src, 12, corrupt=False)
    out = tmp_path / "out"
    ex = DevicesExecutor(["cpu", "cpu"], loader=_disk_fills_loader, threads=1)
    summary = run_batch(discover([str(src)], out).jobs, settings, output_dir=out, executor=ex, handle_signals=False)
    assert summary.stopped and "disk full" in summary.stopped
    assert sorted(Path(o.input).name for o in summary.outcomes) == sorted(names)  # exactly once, in the summary
    failed = [o for o in summary.outcomes if o.status == "failed"]
    assert all("No space left on device" in o.reason or o.reason.startswith("not attempted: disk full")
               for o in failed), [o.reason for o in failed]
    assert any(o.reason.startswith("not attempted") for o in failed)  # it stopped instead of trying every file
    assert Counter(Path(r["input"]).name for r in manifest_records(out)) == Counter(names)  # and in the manifest
    assert not temps(out)
    done = {Path(o.input).name for o in summary.outcomes if o.status == "done"}
    assert sorted(x.name for x in out.glob("*.png")) == sorted(done)


# -- a worker dies mid-image ----------------------------------------------------------------------------------------


def _cli(args, extra_env=None, timeout=300) -> subprocess.CompletedProcess:
    return invsr(args, environ=_env(extra_env), timeout=timeout)


class _Heard(Reporter):
    """Keeps the warnings (what the CLI prints on stderr)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, text: str) -> None:
        self.warnings.append(text)


@pytest.mark.slow
def test_worker_killed_mid_image_is_retried_then_failed(tmp_path, settings):
    src = tmp_path / "in"
    names = _inputs(src, 5, corrupt=False)
    out = tmp_path / "out"
    # Every worker that is about to write img_02.png dies: the image is retried once on another worker, then failed.
    heard = _Heard()
    ex = DevicesExecutor(["cpu", "cpu"], threads=1, write=functools.partial(exit_on_write, "img_02.png", None))
    summary = run_batch(discover([str(src)], out).jobs, settings, output_dir=out, executor=ex, reporter=heard,
                        handle_signals=False)
    assert summary.failed == 1  # exit 1 in the CLI
    outcomes = {Path(o.input).name: o for o in summary.outcomes}
    assert outcomes.keys() == set(names)
    assert outcomes["img_02.png"].status == "failed"
    assert "worker died twice" in outcomes["img_02.png"].reason
    assert "cpu (exit 1)" in outcomes["img_02.png"].reason
    assert all(o.status == "done" for n, o in outcomes.items() if n != "img_02.png"), outcomes
    assert any("worker on cpu died (exit 1)" in w for w in heard.warnings), heard.warnings
    assert not temps(out) and not (out / "img_02.png").exists()
    assert Counter(Path(r["input"]).name for r in manifest_records(out)) == Counter(names)

    # Only the first worker dies: the retry on another worker writes it.
    out2 = tmp_path / "out2"
    heard = _Heard()
    ex = DevicesExecutor(["cpu", "cpu"], threads=1,
                         write=functools.partial(exit_on_write, "img_02.png", str(tmp_path / "once")))
    summary = run_batch(discover([str(src)], out2).jobs, settings, output_dir=out2, executor=ex, reporter=heard,
                        handle_signals=False)
    assert summary.failed == 0 and summary.processed == len(names)  # exit 0
    assert any("worker on cpu died (exit 1)" in w for w in heard.warnings), heard.warnings
    assert sorted(x.name for x in out2.glob("*.png")) == sorted(names) and not temps(out2)
    assert Counter((Path(r["input"]).name, r["status"]) for r in manifest_records(out2)) == Counter(
        (n, "done") for n in names)
    from PIL import Image

    with Image.open(out2 / "img_02.png") as im:
        im.load()


# -- signals and a killed driver ------------------------------------------------------------------------------------


def _start_and_wait_first_done(args):
    p = invsr_popen(args, environ=_env())
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(p.stdout.readline, b"")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while p.poll() is None and not any(b'"done"' in line for line in list(lines)):
        assert time.monotonic() < deadline, "no image in 240 s"
        time.sleep(0.02)
    return p, lines, reader


@pytest.mark.slow
def test_sigterm_stops_the_workers_after_their_writes(tmp_path, models):
    src = tmp_path / "in"
    names = _inputs(src, 12, corrupt=False)
    out = tmp_path / "out"
    p, lines, reader = _start_and_wait_first_done(["upscale", src, out, "--devices", "cpu,cpu", "--json", *models])
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)
    reader.join(timeout=30)  # the reader thread owns stdout (communicate() would race it for the summary line)
    err = p.stderr.read().decode(errors="replace")
    assert p.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    summary = [json.loads(x) for x in lines if b'"summary"' in x]
    assert summary and summary[-1]["interrupted"] == "SIGTERM"
    written = sorted(x.name for x in out.glob("*.png"))
    assert 1 <= len(written) < len(names) and not temps(out)
    from PIL import Image

    for name in written:  # every output there is complete
        with Image.open(out / name) as im:
            im.load()
    recs = manifest_records(out)
    assert Counter(Path(r["input"]).name for r in recs) == Counter(written)  # recorded once, only what was written


@pytest.mark.slow
def test_driver_killed_then_rerun_computes_only_what_is_missing(tmp_path, models):
    src = tmp_path / "in"
    names = _inputs(src, 8, corrupt=False)
    out = tmp_path / "out"
    args = ["upscale", src, out, "--devices", "cpu,cpu", "--json", *models]
    p, lines, reader = _start_and_wait_first_done(args)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    time.sleep(3)  # orphaned workers notice their parent is gone and stop
    first = {Path(r["input"]).name for r in manifest_records(out) if r["status"] == "done"}
    assert first
    p = _cli(args)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 0, err[-3000:]
    outcomes = [json.loads(x) for x in p.stdout.decode().splitlines()]
    done = {Path(o["input"]).name for o in outcomes if o.get("status") == "done"}
    skipped = {Path(o["input"]).name for o in outcomes if o.get("status") == "skipped"}
    assert not done & first and first <= skipped  # nothing recorded is computed again
    assert done | skipped == set(names) and not done & skipped
    assert not temps(out)


# -- the command line -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_devices_with_device_is_an_error(tmp_path):
    imagegen.rgb(tmp_path / "a.png")
    p = _cli(["upscale", tmp_path / "a.png", tmp_path / "out", "--devices", "cpu,cpu", "--device", "cpu"])
    assert p.returncode == 2
    assert "--devices and --device" in p.stderr.decode()
    p = _cli(["upscale", tmp_path / "a.png", tmp_path / "out", "--devices", "gpu"])
    assert p.returncode == 2 and "'gpu'" in p.stderr.decode()
    p = _cli(["upscale", tmp_path / "a.png", tmp_path / "out", "--shard", "2/2"])
    assert p.returncode == 2 and "shard" in p.stderr.decode()


@pytest.mark.slow
def test_cli_shard_from_slurm(tmp_path, models):
    src = tmp_path / "in"
    names = _inputs(src, 7, corrupt=False)
    out = tmp_path / "out"
    slurm = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "2"}
    p = _cli(["upscale", src, out, "--device", "cpu", *models], slurm)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 0, err[-3000:]
    mine = sorted(n for n in names if Shard(1, 2).holds(n))
    assert 0 < len(mine) < len(names)
    assert f"shard 1/2 (from SLURM_ARRAY_TASK_ID=11, SLURM_ARRAY_TASK_MIN=10, SLURM_ARRAY_TASK_COUNT=2): " \
           f"{len(mine)} of {len(names)} input(s)" in err
    assert sorted(x.name for x in out.glob("*.png")) == mine
    assert [x.name for x in folder_manifests(out)] == [".invsr-manifest.shard-1-of-2.jsonl"]


def test_queue_is_largest_first_by_header(tmp_path):
    from invsr_cli.run.executors.devices import _largest_first
    from invsr_cli.work.inputs import probe_inputs
    from invsr_cli.work.process import ImageTask

    src = tmp_path / "in"
    _inputs(src, 5)  # with broken.png, whose size is unknown: last (the worker reports why it cannot read it)
    jobs = discover([str(src)], tmp_path / "out").jobs  # each task carries the header the driver probed
    tasks = [ImageTask(job, i, info=info) for i, (job, info) in enumerate(zip(jobs, probe_inputs(
        [job.input for job in jobs]), strict=True))]
    order = [item.task.job.input.name for item in _largest_first(tasks, None)]
    sizes = {item.task.job.input.name: item.size for item in _largest_first(tasks, None)}
    assert order[-1] == "broken.png" and sizes["broken.png"] == 0
    assert [sizes[n] for n in order] == sorted(sizes.values(), reverse=True)
    assert order != sorted(order)  # not the listing order
