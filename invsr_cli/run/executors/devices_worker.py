"""The worker process of ``--devices`` (:mod:`invsr_cli.run.executors.devices` is the parent): it loads one
engine, then pulls whole images from the parent over its pipe and runs
:func:`invsr_cli.work.process.process_images` on them, writing the outputs itself and sending each outcome back.

An unexpected error on one image is that image's failed outcome (``process_images`` makes it), never a worker
death: a worker dies only when its process does (killed, a segfault, a CUDA error), and the parent handles that.
Messages, worker -> parent: ``ready``, ``want`` (block), ``outcome`` (index, outcome, tiles planned, tiles done),
``tiles``, ``warning``, ``info``, ``stopped`` (a full disk), ``load_failed`` (the error), ``cost``, ``bye``;
parent -> worker: ``task`` (task, solo), ``none``, ``end``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from invsr_cli.settings.settings import Settings, SettingsPolicy
from invsr_cli.work.process import ImageTask
from invsr_cli.work.report import Outcome
from invsr_cli.work.sink import Writer, write_output

__all__ = ["PipeReporter", "worker_main", "PROGRESS_SECONDS"]

PROGRESS_SECONDS = 0.25  # a worker sends its tile counts at most this often (and with each outcome)


class PipeReporter:
    """Sends a worker's progress and warnings to the parent's reporter. Tile counts are gathered and go with the
    next outcome, or every ``PROGRESS_SECONDS``: a message per batch would cost more than the batch on a small
    model (each one wakes the parent)."""

    def __init__(self, conn: Any, verbose: bool) -> None:
        self.conn = conn
        self.verbose = verbose
        self.planned = self.done = 0
        self.last = time.monotonic()

    def tiles_planned(self, n: int) -> None:
        self.planned += n
        self._maybe_flush()

    def tiles_done(self, n: int) -> None:
        self.done += n
        self._maybe_flush()

    def take(self) -> tuple[int, int]:
        counts = (self.planned, self.done)
        self.planned = self.done = 0
        self.last = time.monotonic()
        return counts

    def _maybe_flush(self) -> None:
        if time.monotonic() - self.last >= PROGRESS_SECONDS:
            self.conn.send(("tiles", *self.take()))

    def warning(self, text: str) -> None:
        self.conn.send(("warning", text))

    def info(self, text: str) -> None:
        if self.verbose:
            self.conn.send(("info", text))

    def __getattr__(self, name: str) -> Any:  # the other Reporter callbacks: nothing to send
        return lambda *a, **k: None


def worker_main(wid: int, device: str, threads: int, policy: SettingsPolicy, loader: Callable[[Settings], Any],
                conn: Any, flag: Any, verbose: bool, write: Writer | None = None) -> None:
    """The worker process: load the engine on ``device``, then serve the parent's images until it says end.
    ``write`` (a picklable writer, default :func:`invsr_cli.work.sink.write_output`) is how it writes outputs:
    tests inject faults there (a worker that dies mid-image)."""
    import multiprocessing as mp
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = mp.parent_process()

    def should_stop() -> bool:
        return bool(flag.value) or (parent is not None and not parent.is_alive())

    try:
        import torch

        torch.set_num_threads(threads)
        try:
            engine = loader(replace(policy.settings, device=device))
        except BaseException as e:  # noqa: BLE001 - sent to the parent, which raises it
            conn.send(("load_failed", _picklable(e)))
            return
        if should_stop():
            conn.send(("bye",))
            return
        conn.send(("ready",))
        _serve(engine, policy, conn, should_stop, PipeReporter(conn, verbose), write or write_output)
        conn.send(("bye",))
    except (BrokenPipeError, EOFError, ConnectionResetError):
        pass  # the parent is gone
    finally:
        conn.close()


def _serve(engine: Any, policy: SettingsPolicy, conn: Any, should_stop: Callable[[], bool], reporter: Any,
           write: Writer) -> None:
    """Pull images and process them until the parent says end (or stop)."""
    from invsr_cli.run.executors import verbose_timer
    from invsr_cli.work.process import process_images

    timer = verbose_timer(engine, policy, reporter)
    timed = _TimedConn(conn)
    reporter.conn = timed
    try:
        while not should_stop():
            conn.send(("want", True))  # idle until the parent has work: not counted as overhead
            msg = conn.recv()
            if msg[0] != "task":
                return
            feed = _Feed(timed, msg[1], msg[2], should_stop)
            start = time.perf_counter()
            processing = feed.processing = process_images(feed, policy, engine, reporter=reporter,
                                                          should_stop=should_stop, write=write, timer=timer)
            timed.seconds += time.perf_counter() - start
            for outcome in processing:
                timed.send(("outcome", feed.index_of(outcome), outcome, *reporter.take()))
                timed.images += 1
            if processing.stopped is not None:
                conn.send(("stopped", processing.stopped))
                return
            if feed.ended:
                return
    finally:
        conn.send(("cost", timed.seconds, timed.images))


class _TimedConn:
    """The worker's end of its pipe, counting the seconds its messages keep it from computing: what this
    executor costs per image beyond :func:`process_images` itself (reported to the parent, see
    :attr:`DevicesExecutor.cost`)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.seconds = 0.0
        self.images = 0

    def send(self, msg: tuple) -> None:
        start = time.perf_counter()
        self.conn.send(msg)
        self.seconds += time.perf_counter() - start

    def recv(self) -> Any:
        start = time.perf_counter()
        try:
            return self.conn.recv()
        finally:
            self.seconds += time.perf_counter() - start


class _Feed:
    """The images one ``process_images`` call takes: the first handed over, then one more each time it wants
    one, until the parent has none now (``none``: finish these, then ask again) or no more (``end``). A retried
    image (``solo``) is processed alone."""

    def __init__(self, conn: Any, first: ImageTask, solo: bool, should_stop: Callable[[], bool]) -> None:
        self.conn = conn
        self.first = first
        self.solo = solo
        self.should_stop = should_stop
        self.ended = False
        self.held: dict[tuple[str, str], list[int]] = {}
        self.processing: Any = None  # set once made: a full disk there stops the asking too

    def __iter__(self) -> Iterator[ImageTask]:
        task = self.first
        while True:
            self.held.setdefault((str(task.job.input), str(task.job.output)), []).append(task.index)
            # Ask for the next image before handing this one over, so the reply comes while this one is read and
            # computed, and the engine never waits on a round trip to the parent.
            asked = not self.solo and not self.should_stop() and getattr(self.processing, "stopped", None) is None
            if asked:
                self.conn.send(("want", False))
            yield task
            if not asked:
                return
            reply = self.conn.recv()
            if reply[0] != "task":
                self.ended = reply[0] == "end"
                return
            task = reply[1]

    def index_of(self, outcome: Outcome) -> int:
        indices = self.held.get((outcome.input, outcome.output))
        return indices.pop(0) if indices else -1


def _picklable(e: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")
