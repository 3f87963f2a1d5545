"""Faults of a training run, for real: a full disk while saving (a tmpfs, else a file-size limit), a SIGKILL during
a save, a diverging run (non-finite loss, non-finite weights), fewer images than a batch and images smaller than
the crop. Each keeps the previous checkpoint loadable and says what happened."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from invsr_cli.base.errors import ConfigError, OutputError
from invsr_cli.training.run import TrainingStopped, TrainOptions, latest_checkpoint, run_training
from invsr_cli.training.runlog import read_log
from tests.harness import invsr_popen, temps
from tests.training_kit import images, options


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _small_disk(folder: Path):
    """``folder`` on its own 96 MB tmpfs (mounted with the mount(2) call: no process), yielding a function that
    fills it to all but ``free`` bytes; without the privilege to mount, a per-file size limit (RLIMIT_FSIZE, SIGXFSZ
    ignored) of ``free`` bytes while the function's effect lasts. Yields ``(fill, kind)``."""
    folder.mkdir()
    libc = ctypes.CDLL(None, use_errno=True)  # the C library this process already has
    mounted = libc.mount(b"tmpfs", os.fsencode(folder), b"tmpfs", 0, b"size=96m") == 0
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_sig = signal.getsignal(signal.SIGXFSZ)

    def fill(free: int) -> None:
        if mounted:
            st = os.statvfs(folder)
            with open(folder / "filler", "wb") as f:
                f.write(b"\0" * (st.f_bavail * st.f_frsize - free))
        else:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (free, old_limit[1]))

    def unfill() -> None:
        if mounted:
            (folder / "filler").unlink()
        else:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)

    try:
        yield fill, unfill, "tmpfs" if mounted else "rlimit"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_sig)
        if mounted:
            libc.umount2(os.fsencode(folder), 2)  # MNT_DETACH


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tiny_models, tmp_path):
    data = images(tmp_path / "hr")
    with _small_disk(tmp_path / "disk") as (fill, unfill, kind):
        out = tmp_path / "disk" / "run"
        run_training(options(tiny_models, data, out, iterations=3, save_every=1), stop_after=1)
        first = out / "ckpts" / "model_1.pth"
        digest = _sha(first)
        assert first.stat().st_size > 256 * 1024  # the tiny checkpoint does not fit in what is left below
        fill(64 * 1024)
        try:
            with pytest.raises(OutputError) as err:
                run_training(TrainOptions(inputs=(), out=str(out), resume=True, iterations=0))
        finally:
            unfill()
        msg = str(err.value)
        assert "saving the checkpoint of iteration 2 failed" in msg and "model_1.pth is kept" in msg, msg
        assert ("No space left on device" if kind == "tmpfs" else "File too large") in msg, msg
        assert f"invsr train --resume {out}" in msg
        assert latest_checkpoint(out) == first and _sha(first) == digest
        assert sorted(p.name for p in (out / "ema_ckpts").iterdir()) == ["ema_model_1.pth"]  # no orphan EMA
        assert not temps(out)
        torch.load(first, weights_only=False)
        # with space again the run continues from iteration 1 to the end, the log without the lost iteration
        assert run_training(TrainOptions(inputs=(), out=str(out), resume=True, iterations=0))["iteration"] == 3
        assert [r["iteration"] for r in read_log(out / "log.jsonl")] == [1, 2, 3]


def test_divergence_stops_naming_the_iteration_and_keeps_the_good_checkpoint(tiny_models, tmp_path):
    data = images(tmp_path / "hr")
    out = tmp_path / "a"
    with pytest.raises(TrainingStopped, match=r"non-finite loss at iteration 2 .*model_1\.pth is kept"):
        run_training(options(tiny_models, data, out, iterations=5, save_every=1, lr=1e30))
    assert latest_checkpoint(out).name == "model_1.pth"
    st = torch.load(out / "ckpts" / "model_1.pth", weights_only=False)
    assert all(torch.isfinite(v).all() for v in st["state_dict"].values())
    with pytest.raises(ConfigError, match="--lr must be a positive number"):
        run_training(options(tiny_models, data, tmp_path / "b", lr=float("inf")))


def test_one_small_image_for_a_batch_of_two(tiny_models, tmp_path):
    data = images(tmp_path / "hr", n=1, size=(20, 30))  # smaller than the 64 px crop on both sides
    said: list[str] = []
    summary = run_training(options(tiny_models, data, tmp_path / "run", iterations=2), warn=said.append)
    assert summary["iteration"] == 2
    assert any("1 image(s) for a batch of 2" in m for m in said), said
    assert sum("reflect-padded" in m for m in said) == 1, said  # said once, for 4 padded crops


@pytest.mark.slow  # starts `invsr train` and kills it
def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tiny_models, tmp_path):
    data = images(tmp_path / "hr")
    out = tmp_path / "run"
    proc = invsr_popen(["train", data, "--out", out, "--sd-model", tiny_models.sd_dir, "--init",
                        tiny_models.noise_predictor_path, "--iterations", 500, "--batch", 1, "--crop", 64,
                        "--no-gan", "--no-lpips", "--save-every", 1, "--val-every", 0, "--lr", 1e-4],
                       stdout=subprocess.DEVNULL)  # a line per iteration: a full pipe would stall the run
    caught = None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = [p for d in ("ckpts", "ema_ckpts") if (out / d).is_dir() for p in (out / d).iterdir()
                     if p.name.endswith(".invsr-tmp") and latest_checkpoint(out) is not None]
            if found:
                proc.kill()  # SIGKILL while a checkpoint's temporary file is being written
                caught = found[0].name
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert caught, (proc.returncode, proc.stderr.read().decode(errors="replace")[-2000:])
    assert proc.returncode == -signal.SIGKILL
    last = latest_checkpoint(out)
    n = torch.load(last, weights_only=False)["iters_start"]
    assert last.name == f"model_{n}.pth" and n >= 1
    # the resumed run continues from it, removes the stale temporary file and keeps a log without repeats
    summary = run_training(TrainOptions(inputs=(), out=str(out), resume=True, iterations=n + 1))
    assert summary["iteration"] == n + 1 and not temps(out)
    its = [r["iteration"] for r in read_log(out / "log.jsonl")]
    assert its == list(range(1, n + 2))
