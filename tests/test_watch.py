"""`invsr watch` (issue 13): the settling bookkeeping alone, then the real executable on real file-system events
(inotify here; polling with --poll) and the tiny random models, with one torch thread (OMP_NUM_THREADS=1)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from invsr_cli.base.atomic import TEMP_SUFFIX
from invsr_cli.run.discover import discover
from invsr_cli.run.runner import run_batch
from invsr_cli.run.watch import PARTIAL_SUFFIXES, Settler, ignored_name, watch_folder
from invsr_cli.settings.settings import resolve_settings
from invsr_cli.work.report import Reporter
from tests import imagegen
from tests.harness import invsr, invsr_popen

SETTLE = 0.8  # seconds; the chunked writer below pauses 0.3 s between chunks, well inside it


# -- the bookkeeping ----------------------------------------------------------------------------------------------


def test_a_file_is_due_once_its_stamp_has_held_for_the_settle_time():
    s = Settler(2.0)
    stamps = {"a.png": (10, 1)}
    s.touch("a.png", (10, 1), now=0.0)
    assert s.due(1.9, stamps.get) == []
    stamps["a.png"] = (20, 2)  # still growing: the wait starts again from the moment the change is seen
    assert s.due(1.95, stamps.get) == []
    assert s.due(3.9, stamps.get) == []
    assert s.due(3.95, stamps.get) == [("a.png", (20, 2))]
    assert s.due(10.0, stamps.get) == []  # handed out once


def test_an_event_restarts_the_wait_and_a_vanished_file_is_forgotten():
    s = Settler(1.0)
    stamps = {"a.png": (1, 1), "b.png": (2, 2)}
    s.touch("a.png", (1, 1), now=0.0)
    s.touch("b.png", (2, 2), now=0.0)
    s.touch("a.png", (1, 1), now=0.8)  # an event without a visible change (same-second mtime, same size)
    del stamps["b.png"]
    assert s.due(1.0, stamps.get) == []
    assert "b.png" not in s.pending
    assert s.due(1.8, stamps.get) == [("a.png", (1, 1))]


def test_next_due_is_the_earliest_wait_to_end():
    s = Settler(2.0)
    assert s.next_due() is None
    s.touch("a.png", (1, 1), now=5.0)
    s.touch("b.png", (1, 1), now=4.0)
    assert s.next_due() == 6.0


def test_oldest_settled_file_comes_first():
    s = Settler(0.5)
    stamps = {"late.png": (1, 1), "early.png": (1, 1)}
    s.touch("late.png", (1, 1), now=0.3)
    s.touch("early.png", (1, 1), now=0.1)
    assert [k for k, _ in s.due(1.0, stamps.get)] == ["early.png", "late.png"]


@pytest.mark.parametrize("name", [".hidden.png", f".a.png.1234abcd{TEMP_SUFFIX}", "a.png~", "notes.txt", "a.png.part",
                                  "a.jpg.crdownload", "a.tmp", *(f"a.png{s}" for s in PARTIAL_SUFFIXES)])
def test_hidden_temporary_and_partial_names_are_ignored(name):
    assert ignored_name(name)


@pytest.mark.parametrize("name", ["a.png", "B.JPG", "scan.tiff", "x.webp", "odd name.jpeg"])
def test_image_names_are_taken(name):
    assert not ignored_name(name)


def test_every_upscale_option_watch_takes_sets_a_settings_key():
    """`invsr watch` borrows upscale's options; one that upscale gains and that sets no settings key must be
    mapped or left out (invsr_cli/commands/cli.py: _NOT_WATCH_OPTIONS, _RUN_OPTIONS, _watch_flags)."""
    import inspect

    from invsr_cli.commands.cli import _RUN_OPTIONS, _watch_flags, watch
    from invsr_cli.settings.settings import PRESET_KEYS

    params = [n for n in inspect.signature(watch).parameters if n not in ("input_dir", "output_dir", "settle", "poll")]
    assert {"steps", "fmt", "suffix", "lossless", "quiet", "json_output"} <= set(params)
    flags = _watch_flags({name: True for name in params})
    assert set(flags) <= set(PRESET_KEYS), set(flags) - set(PRESET_KEYS)
    assert len(flags) == len(params) - len(_RUN_OPTIONS)


# -- the real executable ------------------------------------------------------------------------------------------


class Watcher:
    """A running `invsr watch --json`: its JSON lines (stdout) and stderr, collected as they come."""

    def __init__(self, *args) -> None:
        self.p = invsr_popen(["watch", "--json", *args])
        self.objs: list[dict] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_out(self) -> None:
        for line in self.p.stdout:
            self.objs.append(json.loads(line))

    def _read_err(self) -> None:
        for line in self.p.stderr:
            self.err.append(line.decode(errors="replace"))

    def images(self, status: str | None = None) -> list[dict]:
        return [o for o in self.objs if o["type"] == "image" and (status is None or o["status"] == status)]

    def count(self, status: str) -> Counter:
        return Counter(Path(o["input"]).name for o in self.images(status))

    def wait_for(self, what: str, pred: Callable[[], bool], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.p.kill()
                raise AssertionError(f"waiting for {what}: exit {self.p.poll()}; outcomes {self.images()}; "
                                     f"stderr {''.join(self.err)[-3000:]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.p.send_signal(sig)
        rc = self.p.wait(timeout)
        for t in self._threads:
            t.join(10)
        return rc

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def _old(path: Path) -> None:
    os.utime(path, (time.time() - 3600, time.time() - 3600))


def _write_slowly(path: Path, data: bytes, chunks: int = 8, pause: float = 0.3) -> None:
    """Write ``data`` in ``chunks`` pieces ``pause`` seconds apart (a slow copy)."""
    step = -(-len(data) // chunks)
    with open(path, "wb") as f:
        for i in range(0, len(data), step):
            if i:
                time.sleep(pause)
            f.write(data[i:i + step])
            f.flush()
            os.fsync(f.fileno())


def _png(path: Path, seed: int, w: int = 48, h: int = 40) -> bytes:
    imagegen.rgb(path, w, h, seed=seed)
    return path.read_bytes()


@pytest.mark.slow
def test_watch_picks_up_a_slow_copy_once_ignores_hidden_and_partial_files_and_stops_on_sigterm(tmp_path, tiny_flags):
    """One watcher, with its output folder nested inside the watched folder:
    the file already there is done at start; a file copied in chunks over 2.1 s is done exactly once, after it
    settled; hidden, temporary and partial files and our own outputs are ignored; a partial download renamed to
    its final name is done; a file that fails is not retried until it changes; a changed image is recomputed;
    SIGTERM ends it with exit 0 and the summary."""
    inbox, scratch = tmp_path / "in", tmp_path / "scratch"
    out = inbox / "up"
    (inbox / "sub").mkdir(parents=True)
    scratch.mkdir()
    imagegen.rgb(inbox / "a.png", 48, 40, seed=1)
    _old(inbox / "a.png")
    w = Watcher(inbox, out, "--settle", SETTLE, *tiny_flags)
    try:
        w.wait_for("the file already there", lambda: w.count("done")["a.png"] == 1)

        slow = _png(scratch / "b.png", seed=2)
        (inbox / ".hidden.png").write_bytes(slow)
        (inbox / f".a.png.deadbeef{TEMP_SUFFIX}").write_bytes(slow)
        (inbox / "c.png.part").write_bytes(slow)
        (inbox / "d.png~").write_bytes(slow)
        (inbox / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 50)
        _write_slowly(inbox / "sub" / "b.png", slow)  # 8 chunks over 2.1 s
        w.wait_for("the slow copy", lambda: w.count("done")["b.png"] == 1)
        w.wait_for("the bad file", lambda: w.count("failed")["bad.png"] == 1)
        last_write, made = (inbox / "sub" / "b.png").stat().st_mtime, (out / "sub" / "b.png").stat().st_mtime
        assert made - last_write >= SETTLE - 0.02, (made, last_write)  # read only once it had settled

        os.chmod(inbox / "bad.png", 0o600)  # an event that changes neither size nor mtime: no retry
        os.rename(inbox / "c.png.part", inbox / "c.png")  # the download completes
        imagegen.rgb(scratch / "a2.png", 48, 40, seed=3)
        os.replace(scratch / "a2.png", inbox / "a.png")  # the image changes: recomputed
        w.wait_for("the renamed download", lambda: w.count("done")["c.png"] == 1)
        w.wait_for("the changed image", lambda: w.count("done")["a.png"] == 2)
        time.sleep(SETTLE + 0.6)
        assert w.count("failed")["bad.png"] == 1
        imagegen.rgb(inbox / "bad.png", 40, 32, seed=4)  # fixed: now it is tried again, and works
        w.wait_for("the fixed file", lambda: w.count("done")["bad.png"] == 1)
        time.sleep(SETTLE + 0.6)  # nothing else comes
        rc = w.stop(signal.SIGTERM)
    finally:
        w.kill()
    err = "".join(w.err)
    assert rc == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert w.count("done") == Counter({"a.png": 2, "b.png": 1, "c.png": 1, "bad.png": 1}), w.images()
    assert w.count("failed") == Counter({"bad.png": 1}), w.images()
    assert not w.count("skipped")
    assert w.objs[-1]["type"] == "summary" and w.objs[-1]["interrupted"] == "SIGTERM"
    assert (w.objs[-1]["processed"], w.objs[-1]["failed"]) == (5, 1)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "a.png", "bad.png", "c.png", "sub/b.png"]
    manifest = [json.loads(line) for line in (out / ".invsr-manifest.jsonl").read_text().splitlines()]
    assert Counter(Path(r["input"]).name for r in manifest) == Counter({"a.png": 2, "bad.png": 2, "b.png": 1,
                                                                       "c.png": 1})
    assert not [p for p in out.rglob(f"*{TEMP_SUFFIX}")]


@pytest.mark.slow
def test_polling_works_a_second_watcher_or_upscale_exits_75_and_sigint_is_a_clean_stop(tmp_path, tiny_flags):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    imagegen.rgb(inbox / "a.png", 48, 40, seed=1)
    _old(inbox / "a.png")
    w = Watcher(inbox, out, "--poll", 0.3, "--settle", 0.5, *tiny_flags)
    try:
        w.wait_for("the file already there", lambda: w.count("done")["a.png"] == 1)
        for cmd in (["watch", inbox, out, *tiny_flags], ["upscale", inbox, out, *tiny_flags]):
            second = invsr(cmd, timeout=120)
            assert second.returncode == 75, second.stderr.decode(errors="replace")
            assert b"another invsr run" in second.stderr
        imagegen.rgb(tmp_path / "b.png", 40, 32, seed=2)
        os.replace(tmp_path / "b.png", inbox / "b.png")
        w.wait_for("a new file, by polling", lambda: w.count("done")["b.png"] == 1)
        rc = w.stop(signal.SIGINT)
    finally:
        w.kill()
    assert rc == 0, "".join(w.err)[-3000:]
    assert w.objs[-1]["type"] == "summary" and w.objs[-1]["interrupted"] == "SIGINT"
    assert w.count("done") == Counter({"a.png": 1, "b.png": 1})


class _Collect(Reporter):
    """Collects outcomes; sets ``stop`` once ``n`` have come."""

    def __init__(self, stop: threading.Event, n: int) -> None:
        self.stop, self.n, self.seen = stop, n, []

    def outcome(self, o) -> None:
        self.seen.append(o)
        if len(self.seen) >= self.n:
            self.stop.set()


def test_start_up_scan_names_and_skips_as_upscale_r_does(tmp_path, tiny_engine):
    """In process (the engine given): what `upscale -r` made is skipped as up to date, under the same names."""
    inbox, out = tmp_path / "in", tmp_path / "out"
    for rel in ("a.png", "deep/er/b.jpg", "c.bmp"):
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        imagegen.rgb(inbox / rel, 24, 16, seed=len(rel))
        _old(inbox / rel)
    settings = resolve_settings(None, {"tile": 16, "overlap": 0, "device": "cpu", "suffix": "_x4"})
    found = discover([str(inbox)], out, recursive=True, suffix="_x4")
    made = run_batch(found.jobs, settings, output_dir=out, engine=tiny_engine, handle_signals=False)
    assert made.processed == 3

    stop = threading.Event()
    reporter = _Collect(stop, 3)
    summary = watch_folder(inbox, out, settings, settle=0.2, reporter=reporter, engine=tiny_engine,
                           handle_signals=False, stop=stop)
    assert [(o.status, o.reason) for o in reporter.seen] == [("skipped", "up to date")] * 3
    assert sorted(o.output for o in reporter.seen) == sorted(str(j.output) for j in found.jobs)
    assert summary.skipped == 3 and summary.interrupted is None and summary.stopped is None


@pytest.mark.parametrize(("make", "args", "fragment"), [
    (lambda t: None, ["missing", "out"], "does not exist"),
    (lambda t: (t / "in").mkdir(), ["in", "in"], "must not be INPUT_DIR"),
    (lambda t: (t / "in" / "deeper").mkdir(parents=True), ["in/deeper", "in"], "must not be INPUT_DIR"),
    (lambda t: (t / "in").mkdir(), ["in", "out", "--settle", "-1"], "--settle"),
    (lambda t: (t / "in").mkdir(), ["in", "out", "--poll", "0"], "--poll"),
])
@pytest.mark.slow
def test_usage_errors_exit_2(tmp_path, make, args, fragment):
    make(tmp_path)
    p = invsr(["watch", *args], cwd=tmp_path, timeout=60)
    assert p.returncode == 2, p.stderr.decode(errors="replace")
    assert fragment in p.stderr.decode(errors="replace")
    assert not (tmp_path / "out").exists()  # refused before taking the lock (which makes the folder)


@pytest.mark.parametrize("poll", [None, 0.2])
def test_input_dir_removed_ends_the_watch_as_stopped(tmp_path, tiny_engine, poll):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    settings = resolve_settings(None, {"tile": 16, "overlap": 0, "device": "cpu"})
    remover = threading.Timer(0.5, inbox.rmdir)
    remover.start()
    stop = threading.Event()
    guard = threading.Timer(30, stop.set)  # a watch that missed the removal fails below instead of hanging
    guard.start()
    try:
        summary = watch_folder(inbox, out, settings, settle=0.2, poll=poll, engine=tiny_engine,
                               handle_signals=False, stop=stop)
    finally:
        guard.cancel()
        remover.join()
    assert summary.stopped and "ended" in summary.stopped, summary
