"""Faults that tests inject into the real executors (no environment variables, nothing in production code): an
engine that raises on one chosen image, a worker that dies mid-image. Module-level and picklable, so the
``--devices`` workers (spawned processes) and the Ray workers can be given them."""

from __future__ import annotations

import os
from typing import Any


class FlatTileBomb:
    """The engine ``loader`` gives, raising a plain ``RuntimeError("flat tile")`` (an error no per-file handler
    knows) on a batch holding a flat (one-colour) tile; choose the failing image by making it one colour."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __getattr__(self, name: str) -> Any:  # device, identity (recorded in the outputs' provenance), dtype...
        return getattr(self.engine, name)

    def upscale(self, lr: Any, **kw: Any) -> Any:
        if bool(((lr.amax(dim=(1, 2, 3)) - lr.amin(dim=(1, 2, 3))) < 1e-6).any()):
            raise RuntimeError("flat tile")
        return self.engine.upscale(lr, **kw)


def flat_tile_bomb_loader(settings: Any) -> FlatTileBomb:
    from invsr_cli.run.executors import load_engine

    return FlatTileBomb(load_engine(settings))


def exit_on_write(name: str, once: str | None, img: Any, rgb: Any, *rest: Any) -> tuple[int, int]:
    """A worker's writer (``functools.partial(exit_on_write, NAME, ONCE)``) that ends the worker process, as a crash
    would, when the output of the input file ``NAME`` is about to be written (mid-image); with ``once`` (a path),
    only the worker that creates that file dies, so the retry succeeds."""
    from invsr_cli.work.sink import write_output

    if img.job.input.name == name:
        if once is None:
            os._exit(1)
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os._exit(1)
        except FileExistsError:
            pass
    return write_output(img, rgb, *rest)
