"""Image reading/writing: modes, metadata, 16-bit, hostile files, atomic writes."""

from __future__ import annotations

import builtins
import errno
import io
import os
import stat
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from invsr_cli.base import atomic
from invsr_cli.base.atomic import cleanup_stale_temps
from invsr_cli.base.errors import DiskFullError, ImageReadError, OutputError
from invsr_cli.imaging import decode as imageio
from invsr_cli.imaging.decode import probe_image, read_image
from invsr_cli.imaging.encode import resize_rgb, upscale_alpha, write_image

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
RNG = np.random.default_rng(0)


def _u8(shape) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _u16(shape) -> np.ndarray:
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


def _save(path: Path, arr: np.ndarray, fmt: str | None = None, **kw) -> Path:
    Image.fromarray(arr).save(path, fmt, **kw)
    return path


def _exif(**tags) -> Image.Exif:
    ex = Image.Exif()
    for k, v in tags.items():
        ex[{"orientation": 0x0112, "make": 0x010F}[k]] = v
    return ex


def _read_exif(path: Path) -> dict:
    with Image.open(path) as im:
        im.load()
        return dict(im.getexif())


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------------- round trips, 8-bit


def test_png_rgb_round_trip_is_exact(tmp_path):
    arr = _u8((6, 7, 3))
    img = read_image(_save(tmp_path / "a.png", arr))
    assert (img.width, img.height, img.format, img.bit_depth, img.grayscale) == (7, 6, "png", 8, False)
    assert img.rgb.dtype == np.float32 and img.rgb.shape == (6, 7, 3) and img.alpha is None
    np.testing.assert_array_equal(np.rint(img.rgb * 255), arr)
    n = write_image(tmp_path / "out" / "a.png", img.rgb, source=img, format="png")
    assert n == (tmp_path / "out" / "a.png").stat().st_size
    with Image.open(tmp_path / "out" / "a.png") as out:
        assert out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), arr)


def test_jpeg_round_trip(tmp_path):
    arr = np.kron(_u8((4, 4, 3)), np.ones((8, 8, 1), np.uint8))  # flat 8x8 blocks: little JPEG loss
    img = read_image(_save(tmp_path / "a.jpg", arr, quality=98))
    assert img.format == "jpg" and img.rgb.shape == (32, 32, 3)
    write_image(tmp_path / "b.jpg", img.rgb, source=img, format="jpg", quality=98)
    back = read_image(tmp_path / "b.jpg")
    assert np.abs(back.rgb - img.rgb).mean() < 2 / 255


@pytest.mark.parametrize("mode,channels", [("RGBA", 4), ("LA", 2)])
def test_alpha_is_separate_and_reattached(tmp_path, mode, channels):
    arr = _u8((5, 6, channels))
    img = read_image(_save(tmp_path / "a.png", arr))
    assert img.alpha is not None and img.alpha.shape == (5, 6) and img.alpha.dtype == np.float32
    np.testing.assert_array_equal(np.rint(img.alpha * 255), arr[..., -1])
    assert img.grayscale == (mode == "LA")
    if mode == "LA":
        np.testing.assert_array_equal(img.rgb[..., 0], img.rgb[..., 2])
    write_image(tmp_path / "b.png", img.rgb, alpha=img.alpha, source=img, format="png")
    with Image.open(tmp_path / "b.png") as out:
        assert out.mode == mode
        np.testing.assert_array_equal(np.asarray(out), arr)


def test_grayscale_stays_grayscale(tmp_path):
    arr = _u8((9, 4))
    img = read_image(_save(tmp_path / "g.png", arr))
    assert img.grayscale and img.bit_depth == 8 and img.rgb.shape == (9, 4, 3)
    for fmt in ("png", "jpg", "tiff"):
        write_image(tmp_path / f"o.{fmt}", img.rgb, source=img, format=fmt)
        with Image.open(tmp_path / f"o.{fmt}") as out:
            assert out.mode == "L", fmt
            if fmt != "jpg":
                np.testing.assert_array_equal(np.asarray(out), arr)


def test_jpg_output_composites_alpha_over_white(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)  # black under...
    alpha = np.zeros((16, 16), np.uint8)  # ...fully transparent on the left half
    alpha[:, 8:] = 255
    img = read_image(_save(tmp_path / "a.png", np.dstack([rgb, alpha])))
    write_image(tmp_path / "a.jpg", img.rgb, alpha=img.alpha, source=img, format="jpg")
    with Image.open(tmp_path / "a.jpg") as out:
        assert out.mode == "RGB"
        px = np.asarray(out).astype(int)
    assert (px[:, :4] > 245).all() and (px[:, 12:] < 10).all()


# ----------------------------------------------------------------------------------------- 16-bit


def test_16bit_gray_png_keeps_16bit_precision(tmp_path):
    arr = _u16((7, 5))
    img = read_image(_save(tmp_path / "g16.png", arr))
    assert img.grayscale and img.bit_depth == 16
    np.testing.assert_array_equal(np.rint(img.rgb[..., 0] * 65535).astype(np.uint16), arr)
    for fmt in ("png", "tiff"):
        write_image(tmp_path / f"o.{fmt}", img.rgb, source=img, format=fmt)
        with Image.open(tmp_path / f"o.{fmt}") as out:
            assert out.mode.startswith("I;16"), fmt
            np.testing.assert_array_equal(np.asarray(out), arr)
    write_image(tmp_path / "o.jpg", img.rgb, source=img, format="jpg")  # 8-bit only
    with Image.open(tmp_path / "o.jpg") as out:
        assert out.mode == "L"


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_is_not_reduced_to_8bit(tmp_path, ext, channels):
    arr = _u16((6, 9, channels))  # RGB(A) order
    bgr = arr[..., [2, 1, 0, 3][:channels]]
    path = tmp_path / f"c16{ext}"
    assert cv2.imwrite(str(path), bgr)
    img = read_image(path)
    assert img.bit_depth == 16 and not img.grayscale and img.format == ext.strip(".").replace("tif", "tiff")
    np.testing.assert_array_equal(np.rint(img.rgb * 65535).astype(np.uint16), arr[..., :3])
    if channels == 4:
        np.testing.assert_array_equal(np.rint(img.alpha * 65535).astype(np.uint16), arr[..., 3])
    out = tmp_path / f"out{ext}"
    write_image(out, img.rgb, alpha=img.alpha, source=img, format=ext[1:])
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, bgr)
    again = read_image(out)  # and our own reader agrees
    np.testing.assert_array_equal(again.rgb, img.rgb)


def _png16_gray_alpha(arr: np.ndarray) -> bytes:
    """A 16-bit gray+alpha PNG (colour type 4) built by hand: no library here writes one."""
    h, w, _ = arr.shape

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16bit_gray_alpha_png(tmp_path):
    arr = _u16((4, 6, 2))
    path = tmp_path / "la16.png"
    path.write_bytes(_png16_gray_alpha(arr))
    img = read_image(path)
    assert img.grayscale and img.bit_depth == 16 and img.mode == "LA;16"
    np.testing.assert_array_equal(np.rint(img.rgb[..., 1] * 65535).astype(np.uint16), arr[..., 0])
    for name in ("o.png", "o.tif"):  # written as 16-bit RGBA with R = G = B (no 2-channel 16-bit encoder)
        write_image(tmp_path / name, img.rgb, alpha=img.alpha, source=img, format=name[2:])
        back = read_image(tmp_path / name)
        assert back.bit_depth == 16 and back.mode == "RGBA;16", name
        np.testing.assert_array_equal(back.alpha, img.alpha)
        np.testing.assert_array_equal(back.rgb, img.rgb)


# ----------------------------------------------------------------------------------------- orientation, ICC, EXIF


def _quadrants() -> np.ndarray:
    """16x32 image, four flat colour blocks: red, green / blue, white (top-left, top-right / bottom...)."""
    q = np.zeros((16, 32, 3), np.uint8)
    q[:8, :16] = (255, 0, 0)
    q[:8, 16:] = (0, 255, 0)
    q[8:, :16] = (0, 0, 255)
    q[8:, 16:] = (255, 255, 255)
    return q


def test_exif_rotated_jpeg_is_upright_and_orientation_reset(tmp_path):
    src = _save(tmp_path / "r.jpg", _quadrants(), quality=95, exif=_exif(orientation=6, make="Cam"))
    img = read_image(src)
    assert (img.width, img.height) == (16, 32)  # 90 degrees clockwise
    px = np.rint(img.rgb * 255)
    # after rotating clockwise, the bottom-left (blue) block is top-left, the red one top-right
    assert px[2, 2, 2] > 200 and px[2, 2, 0] < 60  # blue
    assert px[2, 13, 0] > 200 and px[2, 13, 2] < 60  # red
    exif = Image.Exif()
    exif.load(img.exif)
    assert exif[0x0112] == 1 and exif[0x010F] == "Cam"
    for fmt in ("jpg", "png", "webp", "tiff"):
        out = tmp_path / f"o.{fmt}"
        write_image(out, img.rgb, source=img, format=fmt)
        tags = _read_exif(out)
        assert tags.get(0x0112, 1) == 1 and tags.get(0x010F) == "Cam", fmt
        with Image.open(out) as im:
            assert im.size == (16, 32)


def test_exif_orientation_of_16bit_colour(tmp_path):
    arr = _u16((3, 5, 3))
    path = tmp_path / "r16.png"
    exif = np.frombuffer(_exif(orientation=8).tobytes()[6:], np.uint8)
    ok, buf = cv2.imencodeWithMetadata(".png", arr[..., ::-1].copy(), [cv2.IMAGE_METADATA_EXIF], [exif])
    path.write_bytes(buf.tobytes())
    img = read_image(path)
    assert (img.height, img.width) == (5, 3)
    expected = np.rot90(arr, 1)  # orientation 8: rotate 90 degrees counter-clockwise
    np.testing.assert_array_equal(np.rint(img.rgb * 65535).astype(np.uint16), expected)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_numpy_orientation_matches_pillow(orientation):
    from PIL import ImageOps

    arr = _u8((3, 5, 3))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", exif=_exif(orientation=orientation))
    buf.seek(0)
    with Image.open(buf) as im:
        im.load()
        ref = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(imageio._orient(arr, orientation), ref)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff"])
def test_icc_profile_is_kept(tmp_path, fmt):
    img = read_image(_save(tmp_path / "a.png", _u8((8, 8, 3)), icc_profile=SRGB))
    assert img.icc == SRGB
    write_image(tmp_path / f"o.{fmt}", img.rgb, source=img, format=fmt)
    with Image.open(tmp_path / f"o.{fmt}") as out:
        assert out.info.get("icc_profile") == SRGB


def test_icc_profile_is_kept_in_16bit_outputs(tmp_path):
    img = read_image(_save(tmp_path / "g.png", _u16((4, 4)), icc_profile=SRGB))
    assert img.bit_depth == 16 and img.icc == SRGB
    img_c = imageio.LoadedImage(**{**img.__dict__, "grayscale": False})
    for name, source in (("g.png", img), ("c.png", img_c), ("c.tif", img_c)):
        write_image(tmp_path / "o" / name, img.rgb, source=source, format=name.split(".")[1])
        with Image.open(tmp_path / "o" / name) as out:
            assert out.info.get("icc_profile") == SRGB, name


def test_palette_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.putdata([0, 1, 2, 1] * 4)
    pal.save(tmp_path / "t.png", transparency=0)
    pal.save(tmp_path / "o.png")
    pal.save(tmp_path / "t.gif", transparency=0)
    for name in ("t.png", "t.gif"):
        img = read_image(tmp_path / name)
        assert img.alpha is not None, name
        np.testing.assert_array_equal(img.alpha[0], [0, 1, 1, 1])
        np.testing.assert_array_equal(img.rgb[0, 1], [1, 0, 0])
    img = read_image(tmp_path / "o.png")
    assert img.alpha is None and not img.grayscale


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / "c.jpg", quality=95)  # pure cyan
    img = read_image(tmp_path / "c.jpg")
    assert img.mode == "CMYK" and img.icc is None
    r, g, b = np.rint(img.rgb[4, 4] * 255)
    assert r < 10 and g > 245 and b > 245


def test_bilevel_image_reads_as_grayscale(tmp_path):
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1").save(tmp_path / "b.png")
    img = read_image(tmp_path / "b.png")
    assert img.grayscale and img.bit_depth == 8
    np.testing.assert_array_equal(img.rgb[..., 0], [[0, 1], [1, 0]])


def test_mpo_camera_jpeg_uses_its_primary_picture(tmp_path):
    a = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    b = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    a.save(tmp_path / "cam.jpg", "MPO", save_all=True, append_images=[b])
    img = read_image(tmp_path / "cam.jpg")
    assert img.format == "jpg" and img.rgb.mean() > 0.7


def test_probe_reads_the_header(tmp_path):
    _save(tmp_path / "a.png", _u8((6, 7, 4)))
    assert probe_image(tmp_path / "a.png") == imageio.ImageInfo(7, 6, "png", "RGBA", 1)


# ----------------------------------------------------------------------------------------- hostile inputs


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _read_error(path, **kw) -> str:
    with pytest.raises(ImageReadError) as err:
        read_image(path, **kw)
    msg = str(err.value)
    assert "\n" not in msg and os.path.basename(os.fsdecode(path))[:3] in msg
    return msg


def test_zero_byte_file(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    assert "empty file (0 bytes)" in _read_error(tmp_path / "z.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_errors_not_padded(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(_u8((64, 64, 3))).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"t.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 2 // 3])
    msg = _read_error(path)
    assert "cannot decode" in msg
    with pytest.raises(ImageReadError):
        read_image(path)  # stays an error on a second try (no global state flipped)


def test_text_file_named_png(tmp_path):
    (tmp_path / "note.png").write_text("not an image\n")
    assert "not a supported image" in _read_error(tmp_path / "note.png")


def test_folder_named_like_an_image(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    assert "is a directory" in _read_error(tmp_path / "x.jpg")


def test_missing_file(tmp_path):
    assert "no such file" in _read_error(tmp_path / "gone.png")


def test_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    assert "not a regular file" in _read_error(tmp_path / "pipe.png")


def test_unreadable_permissions_real(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads 0o000 files; the monkeypatched test below covers the error path")
    path = _save(tmp_path / "p.png", _u8((4, 4, 3)))
    path.chmod(0)
    try:
        assert "permission denied" in _read_error(path)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_unreadable_permissions_simulated(tmp_path, monkeypatch):
    path = _save(tmp_path / "p.png", _u8((4, 4, 3)))
    real_open = builtins.open

    def deny(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    assert "permission denied" in _read_error(path)


def test_huge_dimensions_in_a_small_header_are_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(100000, 100000))
    assert path.stat().st_size < 200
    # beyond twice Image.MAX_IMAGE_PIXELS, Pillow's decompression-bomb check refuses it inside Image.open,
    # whatever --max-pixels says
    for kw in ({"max_pixels": 50_000_000}, {"max_pixels": None}):
        msg = _read_error(path, **kw)
        assert "decompression bomb" in msg and "10000000000 pixels" in msg


def test_max_pixels_message_has_the_numbers(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_png_header(12000, 12000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        msg = _read_error(path, max_pixels=50_000_000)
    assert msg.endswith("12000x12000 = 144000000 px (144.0 MP) exceeds --max-pixels 50000000 px (50.0 MP)")


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_images_are_refused(tmp_path, fmt):
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 100, 200)]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:])
    assert "animated image with 3 frames; invsr upscales still images only" in _read_error(path)
    assert probe_image(path).n_frames == 3


def test_non_utf8_file_name_gives_a_printable_one_line_message(tmp_path):
    name = os.fsdecode(b"bad\xff\nname.png")
    path = tmp_path / name
    path.write_bytes(b"")
    msg = _read_error(path)
    assert "\\xff" in msg and "\\n" in msg and msg.isprintable()


@pytest.mark.parametrize(
    "blob",
    [
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff",  # IFD claims 65535 entries
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x09\x00\x00\x00",  # orientation 9
        b"Exif\x00\x00garbage",
    ],
)
def test_malformed_exif_does_not_fail_the_image(tmp_path, blob):
    _save(tmp_path / "m.jpg", _u8((4, 6, 3)), exif=blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = read_image(tmp_path / "m.jpg")
        assert img.rgb.shape == (4, 6, 3)  # left as stored
        if img.exif is not None:
            exif = Image.Exif()
            exif.load(img.exif)
            assert exif.get(0x0112, 1) == 1
        write_image(tmp_path / "o.jpg", img.rgb, source=img, format="jpg")


def test_corrupt_headers_never_escape_as_other_exceptions(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_u8((16, 16, 3))).save(buf, "PNG")
    good = buf.getvalue()
    rng = np.random.default_rng(5)
    for i in range(40):
        data = bytearray(good)
        for pos in rng.integers(0, 60, 3):
            data[pos] ^= 1 << int(rng.integers(0, 8))
        path = tmp_path / f"flip{i}.png"
        path.write_bytes(bytes(data))
        try:
            img = read_image(path)
        except ImageReadError as exc:
            assert "\n" not in str(exc)
        else:
            assert img.rgb.shape[2] == 3


# ----------------------------------------------------------------------------------------- atomic writes


@pytest.fixture
def source(tmp_path) -> imageio.LoadedImage:
    return read_image(_save(tmp_path / "src.png", _u8((8, 8, 3))))


def test_write_creates_parents_and_leaves_no_temp(tmp_path, source):
    out = tmp_path / "a" / "b" / "c.png"
    write_image(out, source.rgb, source=source, format="png")
    assert out.is_file() and _files(out.parent) == ["c.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0o600


def test_temp_file_is_hidden_in_the_destination_folder(tmp_path, source, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst)))
        assert Path(src).is_file()
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", spy)
    write_image(tmp_path / "o" / "x.png", source.rgb, source=source, format="png")
    (src, dst), *_ = seen
    assert src.parent == dst.parent == tmp_path / "o"
    assert src.name.startswith(".") and ".invsr-tmp" in src.name


def test_failure_mid_write_leaves_nothing(tmp_path, source, monkeypatch):
    def boom(fd):
        raise OSError(errno.EBADF, "simulated failure")

    monkeypatch.setattr(atomic.os, "fsync", boom)
    out = tmp_path / "o" / "x.png"
    with pytest.raises(OutputError) as err:
        write_image(out, source.rgb, source=source, format="png")
    assert not isinstance(err.value, DiskFullError) and "simulated failure" in str(err.value)
    assert _files(out.parent) == []


def test_failure_keeps_the_previous_complete_output(tmp_path, source, monkeypatch):
    out = tmp_path / "x.png"
    out.write_bytes(b"previous complete file")

    def boom(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", boom)
    with pytest.raises(DiskFullError):
        write_image(out, source.rgb, source=source, format="png")
    assert out.read_bytes() == b"previous complete file" and _files(tmp_path) == ["src.png", "x.png"]


_REAL_FDOPEN = os.fdopen


class _FullDisk(io.RawIOBase):
    """A file that accepts 100 bytes, then fails with ENOSPC."""

    def __init__(self, fd):
        self.f = _REAL_FDOPEN(fd, "wb", buffering=0)

    def writable(self):
        return True

    def write(self, b):
        room = 100 - self.f.tell()
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(bytes(b[:room]))

    def fileno(self):
        return self.f.fileno()

    def close(self):
        self.f.close()
        super().close()


def test_enospc_is_disk_full_with_no_partial_file(tmp_path, source, monkeypatch):
    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: io.BufferedWriter(_FullDisk(fd)))
    out = tmp_path / "o" / "x.png"
    with pytest.raises(DiskFullError) as err:
        write_image(out, source.rgb, source=source, format="png")
    msg = str(err.value)
    assert "No space left on device" in msg and "x.png" in msg
    assert _files(out.parent) == []


def test_interrupt_during_write_removes_the_temp(tmp_path, source, monkeypatch):
    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "o" / "x.png", source.rgb, source=source, format="png")
    assert _files(tmp_path / "o") == []


def test_output_path_that_is_a_folder(tmp_path, source):
    (tmp_path / "x.png").mkdir()
    with pytest.raises(OutputError, match="is an existing folder"):
        write_image(tmp_path / "x.png", source.rgb, source=source, format="png")


def test_cleanup_stale_temps(tmp_path):
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / ".a.png.1234abcd.invsr-tmp", tmp_path / "sub" / ".b.jpg.00000000.invsr-tmp"]
    keep = [tmp_path / "a.png", tmp_path / "visible.invsr-tmp", tmp_path / "sub" / ".hidden.png"]
    for p in stale + keep:
        p.write_bytes(b"x")
    assert cleanup_stale_temps(tmp_path) == 2
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    assert cleanup_stale_temps(tmp_path / "missing") == 0


# ----------------------------------------------------------------------------------------- resizing


def test_upscale_alpha_clamps_and_sizes():
    alpha = np.zeros((8, 8), np.float32)
    alpha[:, 4:] = 1
    up = upscale_alpha(alpha, (40, 32))  # (width, height)
    assert up.shape == (32, 40) and up.dtype == np.float32
    assert up.min() == 0 and up.max() == 1  # bicubic overshoot clamped
    assert up[:, :10].max() == 0 and up[:, -10:].min() > 1 - 1e-6


def test_resize_rgb_downscale_averages():
    checker = np.indices((8, 8)).sum(0) % 2
    rgb = np.repeat(checker[..., None], 3, axis=2).astype(np.float32)
    down = resize_rgb(rgb, (4, 4))
    assert down.shape == (4, 4, 3)
    np.testing.assert_allclose(down, 0.5, atol=1e-6)  # area averaging, no aliasing
    assert resize_rgb(rgb[:, :6], (3, 4)).shape == (4, 3, 3)  # size is (width, height)
