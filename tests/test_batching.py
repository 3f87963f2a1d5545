"""The batching policy alone, with ints: which tiles run together, and the out-of-memory policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from invsr_cli.work.batching import Ran, Split, TileRef, TileScheduler, TooLarge, run_tiles


class FakeOOM(Exception):
    pass


def test_full_batches_first_then_the_oldest_partial_group():
    s = TileScheduler(batch=3)
    s.add("a", image=0, n_tiles=2)
    s.add("b", image=1, n_tiles=4)
    key, refs = s.next_batch(more_coming=True)  # "b" is the only full group
    assert key == "b" and [r.tile for r in refs] == [0, 1, 2] and {r.image for r in refs} == {1}
    assert s.next_batch(more_coming=True) is None  # nothing full; more images are being read
    key, refs = s.next_batch(more_coming=False)  # nothing more is coming: the oldest image's group
    assert key == "a" and refs == [TileRef(0, 0), TileRef(0, 1)]
    key, refs = s.next_batch(more_coming=False)
    assert key == "b" and refs == [TileRef(1, 3)]
    assert s.next_batch(more_coming=False) is None and s.waiting == 0


def test_tiles_of_consecutive_images_share_a_batch_and_keep_their_generation():
    s = TileScheduler(batch=4)
    s.add("k", image=0, n_tiles=3)
    s.add("k", image=1, n_tiles=3, generation=2)
    _, refs = s.next_batch(more_coming=True)
    assert refs == [TileRef(0, 0), TileRef(0, 1), TileRef(0, 2), TileRef(1, 0, 2)]


@given(st.lists(st.tuples(st.sampled_from("xyz"), st.integers(1, 9)), min_size=1, max_size=12),
       st.integers(1, 8))
def test_every_tile_is_handed_out_exactly_once_in_batches_no_larger_than_the_batch(images, batch):
    s = TileScheduler(batch)
    for index, (key, n) in enumerate(images):
        s.add(key, index, n)
    seen = []
    while (got := s.next_batch(more_coming=False)) is not None:
        key, refs = got
        assert 1 <= len(refs) <= batch
        assert all(images[r.image][0] == key for r in refs)  # one schedule per batch
        seen += [(r.image, r.tile) for r in refs]
    assert sorted(seen) == sorted((i, t) for i, (_, n) in enumerate(images) for t in range(n))


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        TileScheduler(0)


def fits(limit):
    calls = []

    def upscale(items):
        calls.append(list(items))
        if len(items) > limit:
            raise FakeOOM
        return [f"out{i}" for i in items]

    return upscale, calls


def test_out_of_memory_halves_the_batch_until_it_fits():
    upscale, calls = fits(2)
    events = list(run_tiles(upscale, list(range(8)), oom=FakeOOM))
    assert events[0] == Split(8, 4) and events[1] == Split(4, 2)
    ran = [e for e in events if isinstance(e, Ran)]
    assert [e.items for e in ran] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert all(e.outputs == [f"out{i}" for i in e.items] for e in ran)
    assert max(len(c) for c in calls[-4:]) == 2


def test_a_single_tile_that_does_not_fit_is_too_large():
    upscale, _ = fits(0)
    assert list(run_tiles(upscale, [7], oom=FakeOOM)) == [TooLarge(7)]


def test_items_no_longer_live_are_dropped_before_each_run():
    """The first half's report makes the caller re-plan an image; its tiles in the second half must not run."""
    upscale, calls = fits(1)
    dead: set[str] = set()
    out = []
    for event in run_tiles(upscale, ["a0", "b0"], oom=FakeOOM, live=lambda it: it not in dead):
        out.append(event)
        if isinstance(event, Ran):
            dead.add("b0")  # e.g. image b failed meanwhile
    assert out == [Split(2, 1), Ran(["a0"], ["outa0"])]
    assert ["b0"] not in calls


def test_other_errors_pass_through():
    def upscale(items):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(run_tiles(upscale, [1, 2], oom=FakeOOM))
