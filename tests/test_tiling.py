"""Tile plans, padding, blend weights and accumulation (pure numpy)."""

from __future__ import annotations

import ast
import inspect

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invsr_cli.base.errors import ConfigError
from invsr_cli.geometry import tiling
from invsr_cli.geometry.tiling import (
    BlendAccumulator,
    blend_weights,
    crop_hr,
    gaussian_kernel_1d,
    pad_image,
    plan_tiles,
)

TILES = [16, 32, 64, 128, 256]


def _authors_starts(length: int, pch_size: int, stride: int) -> list[int]:
    """The official ImageSpliterTh.extract_starts, restated from METHOD.md (independent of tiling.py)."""
    if length <= pch_size:
        return [0]
    starts = list(range(0, length, stride))
    for ii in range(len(starts)):
        if starts[ii] + pch_size > length:
            starts[ii] = length - pch_size
    return sorted(set(starts), key=starts.index)


def _axis_starts(plan):
    ys = sorted({y for y, _ in plan.tiles})
    xs = sorted({x for _, x in plan.tiles})
    return ys, xs


def _check_axis(starts: list[int], padded: int, tile: int, overlap: int) -> None:
    assert starts[0] == 0
    assert all(b > a for a, b in zip(starts, starts[1:], strict=False))  # strictly increasing
    assert starts[-1] + tile == padded  # last tile flush with the border
    assert all(0 <= s and s + tile <= padded for s in starts)  # inside the padded image
    covered = np.zeros(padded, dtype=bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    # consecutive tiles overlap by at least `overlap` (more only for the last, moved-back tile)
    for a, b in zip(starts[:-1], starts[1:-1], strict=False):
        assert b - a == tile - overlap


def _check_plan(h: int, w: int, tile: int, overlap: int) -> None:
    plan = plan_tiles(h, w, tile=tile, overlap=overlap)
    top, bottom, left, right = plan.pad
    assert min(plan.pad) >= 0
    assert plan.padded_height == h + top + bottom and plan.padded_width == w + left + right
    for n, before, after, padded in (
        (h, top, bottom, plan.padded_height),
        (w, left, right, plan.padded_width),
    ):
        if n < tile:
            assert padded == tile and after - before in (0, 1)  # centred, odd pixel at the end
        else:
            assert before == 0 and padded % 16 == 0 and 0 <= after < 16
    ys, xs = _axis_starts(plan)
    assert plan.tiles == tuple((y, x) for y in ys for x in xs)  # full grid, row-major
    _check_axis(ys, plan.padded_height, tile, overlap)
    _check_axis(xs, plan.padded_width, tile, overlap)


@pytest.mark.parametrize("tile,overlap", [(16, 0), (16, 8), (32, 31), (128, 32), (128, 64), (256, 100)])
def test_plan_covers_every_size_1_to_1000(tile, overlap):
    for n in range(1, 1001):
        _check_plan(n, 1 + n % 7, tile, overlap)
        _check_plan(1 + n % 5, n, tile, overlap)


@settings(max_examples=300, deadline=None)
@given(
    h=st.integers(1, 1000),
    w=st.integers(1, 1000),
    tile=st.sampled_from(TILES),
    data=st.data(),
)
def test_plan_properties(h, w, tile, data):
    # stride >= 4 keeps the tile grid small; stride 1 is covered by the 1..1000 sweep above
    overlap = data.draw(st.integers(0, tile - 4))
    _check_plan(h, w, tile, overlap)


def test_authors_scheme_tile128_overlap64():
    for n in range(1, 1500):
        plan = plan_tiles(n, 7, tile=128, overlap=64)
        expected_padded = 128 if n < 128 else -(-n // 16) * 16
        assert plan.padded_height == expected_padded
        ys, _ = _axis_starts(plan)
        assert ys == _authors_starts(expected_padded, 128, 64), n


@pytest.mark.parametrize(
    "n,pad",
    [
        (50, (39, 39)),
        (51, (38, 39)),
        (127, (0, 1)),
        (1, (63, 64)),
        (128, (0, 0)),
        (130, (0, 14)),
        (144, (0, 0)),
    ],
)
def test_padding_rules(n, pad):
    plan = plan_tiles(n, n, tile=128, overlap=32)
    assert plan.pad == (*pad, *pad)


def test_exact_tile_is_one_unpadded_tile():
    plan = plan_tiles(128, 128, tile=128, overlap=64)
    assert plan.single and plan.tiles == ((0, 0),) and plan.pad == (0, 0, 0, 0)
    assert plan_tiles(20, 100, tile=128).single
    assert not plan_tiles(129, 100, tile=128).single
    assert not plan_tiles(144, 128, tile=128, overlap=0).single


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"tile": 100}, "`tile` must be a multiple of 16, got 100"),
        ({"tile": 0}, "`tile` must be >= 1, got 0"),
        ({"tile": 64, "overlap": 64}, "`overlap` must be smaller than `tile` (64), got 64"),
        ({"overlap": -1}, "`overlap` must be >= 0, got -1"),
        ({"tile": 128.0}, "`tile` must be an integer, got 128.0"),
        ({"tile": True}, "`tile` must be an integer"),
    ],
)
def test_plan_validation(kwargs, message):
    with pytest.raises(ConfigError) as err:
        plan_tiles(64, 64, **kwargs)
    assert message in str(err.value)


def test_plan_rejects_empty_image():
    with pytest.raises(ConfigError, match="`height` must be >= 1, got 0"):
        plan_tiles(0, 5)


def test_pad_image_reflects_and_keeps_the_original():
    rng = np.random.default_rng(0)
    arr = rng.random((50, 130, 3), dtype=np.float32)
    plan = plan_tiles(50, 130, tile=128)
    top, bottom, left, right = plan.pad
    assert (top, bottom, left, right) == (39, 39, 0, 14)
    out = pad_image(arr, plan)
    assert out.shape == (128, 144, 3)
    np.testing.assert_array_equal(out[top : top + 50, :130], arr)
    np.testing.assert_array_equal(out[top - 1, :130], arr[1])  # reflect: the edge row is not repeated
    np.testing.assert_array_equal(out[top + 50, :130], arr[48])
    np.testing.assert_array_equal(out[top : top + 50, 130], arr[:, 128])


@pytest.mark.parametrize("h,w", [(1, 1), (1, 7), (2, 3), (3, 200)])
def test_pad_image_pad_larger_than_the_image(h, w):
    arr = np.arange(h * w, dtype=np.float32).reshape(h, w)
    plan = plan_tiles(h, w, tile=64)
    out = pad_image(arr, plan)
    assert out.shape == (plan.padded_height, plan.padded_width)
    top, _, left, _ = plan.pad
    np.testing.assert_array_equal(out[top : top + h, left : left + w], arr)
    assert set(np.unique(out)) <= set(np.unique(arr))  # only values of the image, no zeros invented
    if h == 1:
        assert (out == out[top]).all()  # a single row is repeated


def test_pad_image_no_padding_returns_input():
    arr = np.zeros((32, 48), np.float32)
    assert pad_image(arr, plan_tiles(32, 48, tile=32, overlap=0)) is arr


def test_pad_image_rejects_wrong_size():
    with pytest.raises(ValueError, match="plan is for 10x10"):
        pad_image(np.zeros((11, 10)), plan_tiles(10, 10, tile=16, overlap=8))


@pytest.mark.parametrize("k", [4, 64, 512, 1024, 3, 33])
def test_gaussian_kernel_matches_opencv(k):
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    if k % 2 == 0:
        ref = cv2.getGaussianKernel(k + 1, sigma, ktype=cv2.CV_64F)[1:, 0]
    else:
        ref = cv2.getGaussianKernel(k, sigma, ktype=cv2.CV_64F)[:, 0]
    np.testing.assert_allclose(gaussian_kernel_1d(k), ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("tile", [16, 128, 256])
def test_gaussian_weights_are_cv2_outer_product(tile):
    plan = plan_tiles(tile, tile, tile=tile, overlap=tile // 2)
    k = tile * 4
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    g = cv2.getGaussianKernel(k + 1, sigma, ktype=cv2.CV_64F)[1:, 0]
    w = blend_weights(plan, "gaussian")
    assert w.dtype == np.float32 and w.shape == (k, k)
    np.testing.assert_allclose(w, np.outer(g, g).astype(np.float32), rtol=3e-7, atol=0)
    assert w.min() > 0


def test_linear_weights_ramp_over_the_overlap():
    plan = plan_tiles(200, 200, tile=32, overlap=8)
    w = blend_weights(plan, "linear")
    k, o = 128, 32
    assert w.shape == (k, k) and w.dtype == np.float32
    assert w.min() > 0 and w.max() == 1
    row = w[k // 2]
    np.testing.assert_array_equal(row[o : k - o], 1)
    assert (np.diff(row[: o + 1]) > 0).all() and row[o - 1] < 1
    np.testing.assert_array_equal(w, w.T)
    np.testing.assert_array_equal(w, w[::-1, ::-1])
    assert (blend_weights(plan_tiles(64, 64, tile=32, overlap=0), "linear") == 1).all()


def test_linear_ramps_meeting_in_the_middle_stay_positive():
    w = blend_weights(plan_tiles(100, 100, tile=16, overlap=15), "linear")
    assert w.min() > 0 and w.max() < 1


def test_blend_weights_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="`blend` must be one of gaussian, linear"):
        blend_weights(plan_tiles(16, 16, tile=16, overlap=0), "cosine")


def _nn4(x: np.ndarray) -> np.ndarray:
    """x4 nearest-neighbour upsample of an HxWxC array."""
    return np.repeat(np.repeat(x, 4, axis=0), 4, axis=1)


def _model(tile_lr: np.ndarray) -> np.ndarray:
    """A per-pixel 'model': HxWxC LR tile -> (C, 4H, 4W) HR output."""
    return (_nn4(tile_lr) * 0.7 + 0.1).transpose(2, 0, 1)


def _run_tiled(lr: np.ndarray, plan, mode: str) -> np.ndarray:
    padded = pad_image(lr, plan)
    acc = BlendAccumulator(plan, blend_weights(plan, mode), channels=lr.shape[2])
    for i in range(plan.n_tiles):
        rows, cols = plan.lr_slices(i)
        acc.add(i, _model(padded[rows, cols]))
    return acc.result()


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 90),
    w=st.integers(1, 90),
    tile=st.sampled_from([16, 32]),
    mode=st.sampled_from(["gaussian", "linear"]),
    data=st.data(),
)
def test_tiled_equals_untiled_for_a_per_pixel_model(h, w, tile, mode, data):
    overlap = data.draw(st.integers(0, tile - 1))
    rng = np.random.default_rng(h * 1000 + w)
    lr = rng.random((h, w, 3), dtype=np.float32)
    plan = plan_tiles(h, w, tile=tile, overlap=overlap)
    out = _run_tiled(lr, plan, mode)
    expected = _model(lr)
    assert out.shape == (3, 4 * h, 4 * w) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["gaussian", "linear"])
def test_tiled_equals_untiled_authors_setting(mode):
    rng = np.random.default_rng(1)
    lr = rng.random((131, 203, 3), dtype=np.float32)
    plan = plan_tiles(131, 203, tile=128, overlap=64)
    assert plan.n_tiles == 2 * 3
    np.testing.assert_allclose(_run_tiled(lr, plan, mode), _model(lr), rtol=0, atol=1e-5)


def test_blending_actually_mixes_overlapping_tiles():
    # Tiles that disagree (each adds its own index) must be blended: inside an overlap the result lies strictly
    # between the two tiles' values, and the Gaussian favours the tile whose centre is nearer.
    plan = plan_tiles(16, 48, tile=32, overlap=16)
    assert plan.tiles == ((0, 0), (0, 16))
    acc = BlendAccumulator(plan, blend_weights(plan, "gaussian"), channels=1)
    for i in range(2):
        acc.add(i, np.full((1, 128, 128), float(i), np.float32))
    out = acc.result()[0]
    # padded LR is 32 rows (8 top), HR crop rows 32..96; LR columns 16..32 are shared
    assert (out[:, : 4 * 16] == 0).all() and (out[:, 4 * 32 :] == 1).all()
    shared = out[:, 4 * 16 : 4 * 32]
    assert (shared > 0).all() and (shared < 1).all()
    assert (np.diff(shared[0]) > 0).all()  # moves from tile 0 towards tile 1
    assert shared[0, 0] < 0.5 < shared[0, -1]


@pytest.mark.parametrize("h,w", [(128, 128), (50, 77), (1, 1)])
def test_single_tile_result_is_the_tile_output_exactly(h, w):
    plan = plan_tiles(h, w, tile=128, overlap=64)
    assert plan.single
    rng = np.random.default_rng(2)
    tile_out = (rng.random((3, 512, 512), dtype=np.float32) * 3 - 1).astype(np.float32)
    acc = BlendAccumulator(plan, blend_weights(plan), channels=3)
    acc.add(0, tile_out)
    out = acc.result()
    rows, cols = crop_hr(plan)
    assert out.shape == (3, 4 * h, 4 * w)
    np.testing.assert_array_equal(out, tile_out[:, rows, cols])


def test_accumulator_refuses_duplicates_missing_and_wrong_shapes():
    plan = plan_tiles(40, 40, tile=16, overlap=8)
    acc = BlendAccumulator(plan, blend_weights(plan), channels=3)
    ok = np.zeros((3, 64, 64), np.float32)
    acc.add(0, ok)
    with pytest.raises(ValueError, match="already added"):
        acc.add(0, ok)
    with pytest.raises(ValueError, match=r"must be \(3, 64, 64\)"):
        acc.add(1, np.zeros((3, 64, 60), np.float32))
    with pytest.raises(IndexError):
        acc.add(plan.n_tiles, ok)
    with pytest.raises(RuntimeError, match=f"{plan.n_tiles - 1} of {plan.n_tiles} tiles were never added"):
        acc.result()
    with pytest.raises(ValueError, match="weights must be 64x64"):
        BlendAccumulator(plan, np.ones((32, 32), np.float32))


class _Duck:
    """An array type offering only what the accumulator contract promises: shape, slicing, *, /, +=."""

    def __init__(self, a):
        self.a = a

    @property
    def shape(self):
        return self.a.shape

    def __getitem__(self, key):
        return _Duck(self.a[key])

    def __setitem__(self, key, value):
        self.a[key] = value.a

    def __mul__(self, other):
        return _Duck(self.a * other.a)

    def __truediv__(self, other):
        return _Duck(self.a / other.a)

    def __iadd__(self, other):
        self.a += other.a
        return self


def test_accumulator_needs_only_the_documented_operations():
    rng = np.random.default_rng(3)
    lr = rng.random((37, 45, 3), dtype=np.float32)
    plan = plan_tiles(37, 45, tile=16, overlap=4)
    padded = pad_image(lr, plan)
    acc = BlendAccumulator(
        plan, _Duck(blend_weights(plan, "linear")), zeros=lambda s: _Duck(np.zeros(s, np.float32))
    )
    for i in range(plan.n_tiles):
        rows, cols = plan.lr_slices(i)
        acc.add(i, _Duck(_model(padded[rows, cols])))
    np.testing.assert_allclose(acc.result().a, _model(lr), atol=1e-5)


def test_accumulator_with_torch_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    lr = rng.random((40, 70, 3), dtype=np.float32)
    plan = plan_tiles(40, 70, tile=32, overlap=8)
    padded = pad_image(lr, plan)
    w = torch.from_numpy(blend_weights(plan))
    acc = BlendAccumulator(plan, w, zeros=lambda s: torch.zeros(s, dtype=torch.float32))
    for i in range(plan.n_tiles):
        rows, cols = plan.lr_slices(i)
        acc.add(i, torch.from_numpy(_model(padded[rows, cols])).half())  # fp16 outputs, float32 accumulation
    out = acc.result()
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), _model(lr), atol=1e-3)


def test_tiling_imports_numpy_only():
    tree = ast.parse(inspect.getsource(tiling))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "collections", "dataclasses", "typing", "numpy", "invsr_cli"}


def test_accumulator_can_make_its_own_weights():
    plan = plan_tiles(40, 40, tile=16, overlap=8)
    converted = []

    def asarray(a):
        converted.append(a.shape)
        return a.astype(np.float64)

    acc = BlendAccumulator(plan, mode="linear", asarray=asarray)
    assert converted == [(64, 64)] and acc.weights.dtype == np.float64
    np.testing.assert_array_equal(acc.weights, blend_weights(plan, "linear"))
    np.testing.assert_array_equal(BlendAccumulator(plan).weights, blend_weights(plan, "gaussian"))
