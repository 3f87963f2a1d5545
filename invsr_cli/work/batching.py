"""Which tiles go into the next engine batch, and what to do when a batch does not fit: pure code, no torch.

* :class:`TileScheduler` keeps the tiles waiting, grouped by engine key (images whose settings share a schedule
  share batches, so a folder that mixes schedules still fills them). It hands out a full batch when one is ready,
  and the oldest group's partial batch once nothing more is coming.
* :func:`run_tiles` runs one batch through an ``upscale`` function with the out-of-memory policy: halve the batch
  until it fits; a single tile that still does not fit is handed back so its image can be re-planned with a
  smaller tile (or failed).

Tiles are :class:`TileRef` records (image order, tile index, plan generation); the caller maps them to pixels.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["TileRef", "TileScheduler", "Ran", "Split", "TooLarge", "run_tiles"]


@dataclass(frozen=True)
class TileRef:
    """One tile of one image. ``image`` orders images (lower = read earlier); ``generation`` counts the image's
    re-plans, so a tile of an older plan is recognisably stale."""

    image: int
    tile: int
    generation: int = 0


class TileScheduler:
    """Tiles waiting for the engine, grouped by key, oldest image first within a group."""

    def __init__(self, batch: int) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.batch = batch
        self._groups: dict[Hashable, deque[TileRef]] = {}

    def add(self, key: Hashable, image: int, n_tiles: int, generation: int = 0) -> None:
        """Queue all ``n_tiles`` tiles of ``image`` (plan ``generation``) under ``key``."""
        group = self._groups.setdefault(key, deque())
        group.extend(TileRef(image, i, generation) for i in range(n_tiles))

    @property
    def waiting(self) -> int:
        return sum(len(g) for g in self._groups.values())

    def next_batch(self, *, more_coming: bool) -> tuple[Hashable, list[TileRef]] | None:
        """A full batch from the first group that has one. Otherwise, when ``more_coming`` is false (no image is
        being read that could fill a batch), a partial batch from the group holding the oldest image's tiles, so
        that image finishes first. ``None`` when there is nothing to run now."""
        key = next((k for k, g in self._groups.items() if len(g) >= self.batch), None)
        if key is None and not more_coming:
            live = [(g[0].image, i, k) for i, (k, g) in enumerate(self._groups.items()) if g]
            key = min(live)[2] if live else None
        if key is None:
            return None
        group = self._groups[key]
        return key, [group.popleft() for _ in range(min(self.batch, len(group)))]


@dataclass(frozen=True)
class Ran:
    """``items`` ran; ``outputs[i]`` belongs to ``items[i]``."""

    items: list[Any]
    outputs: Any


@dataclass(frozen=True)
class Split:
    """A batch of ``size`` did not fit; the scheduler's batch should become ``new_size``."""

    size: int
    new_size: int


@dataclass(frozen=True)
class TooLarge:
    """``item`` does not fit even alone: its image needs a smaller tile."""

    item: Any


def run_tiles(
    upscale: Callable[[list[Any]], Any],
    items: Sequence[Any],
    *,
    oom: type[BaseException] | tuple[type[BaseException], ...],
    live: Callable[[Any], bool] = lambda item: True,
) -> Iterator[Ran | Split | TooLarge]:
    """Run ``items`` through ``upscale`` and report what happened, in order.

    ``upscale(items)`` returns one output per item, or raises ``oom`` (e.g. ``torch.OutOfMemoryError``). Then the
    batch size is halved (a :class:`Split` says so) and the items left run in chunks of that size; a single item
    that does not fit yields :class:`TooLarge`. ``live`` is asked before every run: the caller acts on each report
    as it comes (a re-planned image makes its other tiles stale), and items no longer live are dropped.
    """
    limit = max(1, len(items))
    queue = list(items)
    while True:
        queue = [it for it in queue if live(it)]
        if not queue:
            return
        chunk, queue = queue[:limit], queue[limit:]
        try:
            outputs = upscale(chunk)
        except oom:
            if len(chunk) == 1:
                yield TooLarge(chunk[0])
                continue
            limit = len(chunk) // 2
            yield Split(len(chunk), limit)
            queue = chunk + queue
            continue
        yield Ran(chunk, outputs)
