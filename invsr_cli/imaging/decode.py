"""Image decoding, at the edges: Pillow and its plugins (OpenCV for 16-bit colour). Encoding and writing are
:mod:`invsr_cli.imaging.encode`; atomic file writes are :mod:`invsr_cli.base.atomic`.

Reading (:func:`read_image`) gives float32 RGB in [0, 1] for the model plus what is needed to write the result
back faithfully: alpha (kept separately), whether the image is grayscale, its bit depth (8 or 16), the ICC profile
and the EXIF block (orientation applied to the pixels and reset to 1). :func:`read_xmp` reads an image's XMP
packet back (the provenance record, for ``invsr inspect``).

Policies
--------
* **Formats read**: PNG, JPEG (and MPO, the multi-picture JPEG of many cameras: its first, primary picture),
  WebP, TIFF, BMP, GIF and AVIF (Pillow's own codec), and with the optional extras HEIC/HEIF (``pillow-heif``,
  ``invsr-cli[heif]``) and JPEG XL (``pillow-jxl-plugin``, ``invsr-cli[jxl]``); all recognised by content, not by
  extension. Without its extra a HEIC or JPEG XL file fails with ``needs `pip install 'invsr-cli[heif]'```` (or
  ``[jxl]``), never as a broken file. Other formats Pillow knows are refused (some, like EPS, would run external
  programs). The JPEG XL plugin decodes the whole file to read its header, so for JPEG XL ``max_pixels`` and
  Pillow's decompression-bomb limit are checked from the codestream's size header first (:func:`_jxl_size`,
  the one hand-written parser here: no installed library reads it without decoding); its orientation is the codestream's (applied by libjxl), an EXIF orientation is ignored
  as the JPEG XL specification says. 10/12-bit HEIC is read as 8-bit (pillow-heif's default).
* **Animated / multi-frame files** (animated GIF/PNG/WebP, multi-page TIFF) are refused with
  ``"animated image with N frames; invsr upscales still images only"``: picking one frame silently would lose
  the rest.
* **Limits**: ``max_pixels`` is checked from the header before anything is decoded; Pillow's own
  decompression-bomb check stays on: above twice ``Image.MAX_IMAGE_PIXELS`` (about 179 MP by default) Pillow
  refuses the file inside ``Image.open``, before ``max_pixels`` is looked at, with its own numbers.
* **Truncated files** are errors (``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False and every image is fully
  decoded before use).
* **16-bit**: 16-bit grayscale PNG/TIFF are read with Pillow; Pillow would silently reduce 16-bit RGB/RGBA/LA
  PNG/TIFF to 8 bits, so those pixels are decoded with OpenCV (metadata still from Pillow).

Every read failure is an :class:`~invsr_cli.base.errors.ImageReadError` whose message is one line naming the file.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError, features

from invsr_cli.base.errors import ImageReadError, describe_exception
from invsr_cli.base.paths import display_path
from invsr_cli.imaging.formats import VIDEO_EXTENSIONS

__all__ = [
    "ImageInfo",
    "LoadedImage",
    "READ_FORMATS",
    "TIFF_EXIF_TAGS",
    "probe_image",
    "read_image",
    "pixel_count",
    "canonical_format",
    "missing_plugin",
    "register_plugins",
    "read_xmp",
]

# Pillow format names we decode (content-detected), and our canonical lower-case names for them.
_FORMAT_NAMES = {
    "PNG": "png",
    "JPEG": "jpg",
    "MPO": "jpg",
    "WEBP": "webp",
    "TIFF": "tiff",
    "BMP": "bmp",
    "DIB": "bmp",
    "GIF": "gif",
    "AVIF": "avif",
    "HEIF": "heic",
    "JXL": "jxl",
}
# MPO comes via JPEG; HEIF and JXL are there once their plugin is registered (register_plugins).
READ_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "DIB", "GIF", "AVIF", "HEIF", "JXL")
_FORMAT_ALIASES = {"jpeg": "jpg", "jpe": "jpg", "jfif": "jpg", "tif": "tiff", "heif": "heic", "hif": "heic"}
# Optional read plugins: canonical format -> (module, the extra that installs it, its name for messages).
_PLUGINS = {"heic": ("pillow_heif", "heif", "HEIC/HEIF"), "jxl": ("pillow_jxl", "jxl", "JPEG XL")}
# ISO-BMFF major/compatible brands of HEIF images (not AVIF's "avif"/"avis", which Pillow reads itself).
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_ORIENTATION = 0x0112
# Descriptive tags worth carrying over from a TIFF source's IFD0 (the rest describe the TIFF's own layout); public
# because imagewrite writes the same tags into a 16-bit TIFF's own IFD.
TIFF_EXIF_TAGS = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)
_EXIF_SUB_IFDS = (0x8769, 0x8825)  # Exif, GPS
_DESCRIPTION = 0x010E

ImageFile.LOAD_TRUNCATED_IMAGES = False  # the default; a truncated file must be an error, never padded


@dataclass(frozen=True)
class ImageInfo:
    """What the header says. ``width``/``height`` are the stored size (for TIFF Pillow already applies the
    orientation tag; for other formats an EXIF rotation is not reflected here). ``orientation``: the EXIF rotation
    (1..8) still to apply to that size: 1 when absent, and always 1 for TIFF."""

    width: int
    height: int
    format: str
    mode: str
    n_frames: int
    orientation: int = 1


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image, EXIF orientation applied.

    ``rgb``: float32 ``(height, width, 3)`` in [0, 1] (grayscale replicated to 3 channels); ``alpha``: float32
    ``(height, width)`` in [0, 1] or None; ``exif`` has its Orientation reset to 1.
    """

    path: Path
    rgb: np.ndarray
    alpha: np.ndarray | None
    grayscale: bool
    bit_depth: int
    format: str
    icc: bytes | None
    exif: bytes | None
    width: int
    height: int
    mode: str = ""


def canonical_format(name: str) -> str:
    """``"JPEG"``/``"jpeg"``/``"jpe"``/``"jfif"``/``"MPO"`` -> ``"jpg"``, ``"tif"`` -> ``"tiff"``, others
    lower-cased (so a file extension or a Pillow format name both work)."""
    upper = name.upper()
    if upper in _FORMAT_NAMES:
        return _FORMAT_NAMES[upper]
    low = name.lower()
    return _FORMAT_ALIASES.get(low, low)


def _fail(path: Path | str, reason: str) -> ImageReadError:
    reason = " ".join(str(reason).split())  # one line, whatever the library said
    return ImageReadError(f"{display_path(path)}: {reason}")


def _check_file(path: Path) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except PermissionError:
        raise _fail(path, "permission denied") from None
    except OSError as exc:
        raise _fail(path, f"cannot stat: {exc.strerror or describe_exception(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(path, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, "not a regular file")  # a FIFO or device would block or never end
    if st.st_size == 0:
        raise _fail(path, "empty file (0 bytes)")


@cache
def register_plugins() -> frozenset[str]:
    """Register the optional read plugins that are installed (once); -> the canonical formats they add. Public
    because :mod:`invsr_cli.imaging.encode` asks it whether JPEG XL can be encoded (the same plugin writes it)."""
    found = set()
    for fmt, (module, _extra, _name) in _PLUGINS.items():
        try:
            mod = __import__(module)  # pillow_jxl registers itself on import
        except ImportError:
            continue
        if fmt == "heic":
            mod.register_heif_opener()
        found.add(fmt)
    return frozenset(found)


def _sniff(head: bytes) -> str | None:
    """The canonical format a file's first bytes announce, for the formats that need a plugin or a codec Pillow
    may lack: heic, jxl, avif; None otherwise."""
    if head[:2] == b"\xff\x0a" or head[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\x0a":
        return "jxl"
    if head[4:8] == b"ftyp" and len(head) >= 16:
        size = min(int.from_bytes(head[:4], "big"), len(head))
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, size - 3, 4)}
        if brands & {b"avif", b"avis"}:
            return "avif"
        if brands & _HEIF_BRANDS:
            return "heic"
    return None


def missing_plugin(fmt: str) -> str | None:
    """Why a ``fmt`` file (canonical name) cannot be read here, or None when it can: the optional extra to
    install (HEIC, JPEG XL), or Pillow built without AVIF."""
    fmt = canonical_format(fmt)
    if fmt in _PLUGINS and fmt not in register_plugins():
        _module, extra, name = _PLUGINS[fmt]
        return f"{name} image: needs `pip install 'invsr-cli[{extra}]'`"
    if fmt == "avif" and not features.check("avif"):
        return "AVIF image: this Pillow has no AVIF codec (needs Pillow >= 11.3 built with libavif)"
    return None


@cache
def _available_formats() -> tuple[str, ...]:
    """READ_FORMATS less the plugins that are not installed (Image.open fails on an unknown format name)."""
    register_plugins()
    Image.init()
    return tuple(f for f in READ_FORMATS if f in Image.OPEN)


_JXL_RATIOS = ((1, 1), (12, 10), (4, 3), (3, 2), (16, 9), (5, 4), (2, 1))
_JXL_HEAD = 1 << 20  # how far into a JPEG XL container to look for the codestream's start


def _jxl_codestream(data: bytes) -> bytes | None:
    """The start of the codestream of a JPEG XL file (bare, or in a ``jxlc``/first ``jxlp`` box)."""
    if data[:2] == b"\xff\x0a":
        return data
    pos = 0
    while pos + 8 <= len(data):
        size, kind, head = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8], 8
        if size == 1:
            size, head = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        if kind == b"jxlc":
            return data[pos + head :]
        if kind == b"jxlp":
            return data[pos + head + 4 :]  # after the part index
        if size == 0 or size < head:
            return None
        pos += size
    return None


def _jxl_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG XL SizeHeader (ISO/IEC 18181-1 D.2), without decoding; None when the bytes do
    not hold one. pillow-jxl-plugin decodes the whole image to learn its size, so this is the only way to refuse
    a too-large JPEG XL before its pixels are allocated."""
    cs = _jxl_codestream(data)
    if cs is None or len(cs) < 11 or cs[:2] != b"\xff\x0a":
        return None
    bits, pos = int.from_bytes(cs[2:11], "little"), 0  # at most 1 + 2*(2 + 30) + 3 = 68 bits

    def u(n: int) -> int:
        nonlocal pos
        value = (bits >> pos) & ((1 << n) - 1)
        pos += n
        return value

    def u32() -> int:
        return 1 + u((9, 13, 18, 30)[u(2)])

    div8 = u(1)
    height = (1 + u(5)) * 8 if div8 else u32()
    ratio = u(3)
    if ratio:
        num, den = _JXL_RATIOS[ratio - 1]
        return height * num // den, height
    return ((1 + u(5)) * 8 if div8 else u32()), height


def _precheck_jxl(path: Path, fp: Any, max_pixels: int | None) -> None:
    """Refuse a JPEG XL that is too large from its header, as Image.open and max_pixels do for other formats."""
    head = fp.read(16)
    if _sniff(head) == "jxl":
        head += fp.read(_JXL_HEAD)
    fp.seek(0)
    if _sniff(head) != "jxl" or (size := _jxl_size(head)) is None:
        return
    w, h = size
    if w * h > 2 * (Image.MAX_IMAGE_PIXELS or 0) > 0:
        raise _fail(path, f"refused as a possible decompression bomb: JPEG XL header says {w}x{h} = {w * h} "
                    f"pixels, over twice Pillow's limit of {Image.MAX_IMAGE_PIXELS}")
    _check_pixels(path, w, h, max_pixels)


def _open(path: Path, fp: Any, max_pixels: int | None = None) -> Image.Image:
    _precheck_jxl(path, fp, max_pixels)
    try:
        return Image.open(fp, formats=_available_formats())
    except UnidentifiedImageError:
        fp.seek(0)
        why = missing_plugin(_sniff(fp.read(64)) or "")
        if not why and path.suffix.lower() in VIDEO_EXTENSIONS:
            why = "a video, not an image: `invsr upscale` takes videos; this reads images only"
        raise _fail(
            path, why or "not a supported image (PNG, JPEG, WebP, TIFF, BMP, GIF, AVIF, HEIC or JPEG XL) or "
            "corrupt header"
        ) from None
    except Image.DecompressionBombError as exc:
        raise _fail(path, f"refused as a possible decompression bomb: {exc}") from None
    except Exception as exc:  # Pillow raises many types on hostile headers
        raise _fail(path, f"unreadable header ({describe_exception(exc)})") from None


def _open_file(path: Path) -> Any:
    try:
        return open(path, "rb")  # closed by the caller's `with`
    except PermissionError:
        raise _fail(path, "permission denied") from None
    except IsADirectoryError:
        raise _fail(path, "is a directory, not an image file") from None
    except OSError as exc:
        raise _fail(path, f"cannot open: {exc.strerror or describe_exception(exc)}") from None


def _n_frames(im: Image.Image) -> int:
    return int(getattr(im, "n_frames", 1) or 1)


def pixel_count(n: int) -> str:
    """A pixel count for messages: exact (``--max-pixels`` is given in pixels), with megapixels beside it from one
    million on, so two different counts never print alike (``0.0 MP exceeds 0.0 MP``)."""
    return f"{n} px ({n / 1e6:.1f} MP)" if n >= 1_000_000 else f"{n} px"


def _check_pixels(path: Path, w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels is not None and w * h > max_pixels:
        raise _fail(path, f"{w}x{h} = {pixel_count(w * h)} exceeds --max-pixels {pixel_count(max_pixels)}")


def probe_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> ImageInfo:
    """Read the header only (no pixel decoding). Raises :class:`ImageReadError`, also for an image larger than
    ``max_pixels`` (the same check and message as :func:`read_image`)."""
    path = Path(path)
    _check_file(path)
    with _open_file(path) as fp, _open(path, fp, max_pixels) as im:
        try:
            n_frames = _n_frames(im)
        except Exception as exc:
            raise _fail(path, f"unreadable frames ({describe_exception(exc)})") from None
        _check_pixels(path, im.width, im.height, max_pixels)
        return ImageInfo(im.width, im.height, canonical_format(im.format or ""), im.mode, n_frames,
                         _header_orientation(im, fp))


def _header_orientation(im: Image.Image, fp: Any) -> int:
    """The EXIF orientation from the open header, without decoding: a PNG's ``eXIf`` chunk may follow its pixel
    data, where Pillow finds it only by decoding, so the chunks are walked instead (seeks, no pixels read). TIFF: 1,
    Pillow reports its size oriented."""
    if im.format == "TIFF":
        return 1
    if im.format == "PNG" and "exif" not in im.info:
        data = _png_exif_chunk(fp)
        if data is None:
            return 1
        try:
            exif = Image.Exif()
            exif.load(data)
            value = int(exif.get(_ORIENTATION, 1) or 1)
        except Exception:
            return 1
        return value if 1 <= value <= 8 else 1
    return _safe_orientation(im)


def _png_exif_chunk(fp: Any) -> bytes | None:
    """The data of a PNG's ``eXIf`` chunk, found by walking the chunk headers from the start of the file."""
    try:
        fp.seek(8)
        while True:
            head = fp.read(8)
            if len(head) < 8:
                return None
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind == b"eXIf":
                return fp.read(length)
            if kind == b"IEND":
                return None
            fp.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
    except (OSError, ValueError):
        return None


def _rawmode(im: Image.Image) -> str:
    if not im.tile:
        return ""
    args = im.tile[0].args if hasattr(im.tile[0], "args") else im.tile[0][3]
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return ""


def _is_16bit_colour(im: Image.Image) -> bool:
    return im.format in ("PNG", "TIFF") and im.mode in ("RGB", "RGBA", "LA") and ";16" in _rawmode(im)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an HxW[xC] array, as ``ImageOps.exif_transpose`` does."""
    swap = (1, 0, *range(2, arr.ndim))
    ops: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(swap),
        6: lambda a: a.transpose(swap)[:, ::-1],
        7: lambda a: a.transpose(swap)[::-1, ::-1],
        8: lambda a: a.transpose(swap)[::-1],
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr


def _safe_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8); 1 when absent or malformed. For TIFF it must be read before ``load()``,
    which applies it and drops the tag."""
    try:
        value = im.tag_v2.get(_ORIENTATION, 1) if im.format == "TIFF" else im.getexif().get(_ORIENTATION, 1)
        value = int(value)
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def _exif_transpose(im: Image.Image) -> Image.Image:
    """``ImageOps.exif_transpose``; a malformed EXIF block leaves the image as stored rather than failing it."""
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:
        return im


def _is_layout_note(text: Any) -> bool:
    """tifffile's ``ImageDescription`` (``{"shape": [h, w, 3]}``): the source array's layout, not a description;
    carried over, it would state the old shape in the upscaled output."""
    import json

    if not isinstance(text, str) or not text.lstrip().startswith("{"):
        return False
    try:
        note = json.loads(text)
    except ValueError:
        return False
    return isinstance(note, dict) and "shape" in note


def _exif_bytes(im: Image.Image) -> bytes | None:
    """The EXIF block to write back (orientation reset to 1); None when absent or unreadable (never fatal)."""
    try:
        return _exif_bytes_or_raise(im)
    except Exception:
        return None


def _exif_bytes_or_raise(im: Image.Image) -> bytes | None:
    exif = im.getexif()
    if not len(exif):
        return None
    if im.format == "TIFF":  # IFD0 of a TIFF is the file's own layout: keep the descriptive tags only
        clean = Image.Exif()
        for tag in TIFF_EXIF_TAGS:
            if tag in exif and not (tag == _DESCRIPTION and _is_layout_note(exif[tag])):
                clean[tag] = exif[tag]
        for tag in _EXIF_SUB_IFDS:
            sub = exif.get_ifd(tag) if tag in exif else {}
            if sub:
                clean[tag] = dict(sub)
        if not len(clean):
            return None
        exif = clean
    elif _ORIENTATION in exif:
        exif[_ORIENTATION] = 1
    return exif.tobytes()


def _to_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * np.float32(1 / 255)
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        return arr.astype(np.float32) * np.float32(1 / 65535)
    if arr.dtype.kind in "iu":  # mode "I": 32-bit integers holding 16-bit samples
        return np.clip(arr, 0, 65535).astype(np.float32) * np.float32(1 / 65535)
    return np.clip(np.nan_to_num(arr.astype(np.float32)), 0, 1)  # mode "F"


def _decode_16bit_colour(path: Path, data: bytes, im: Image.Image, orientation: int) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (2, 3, 4):
        raise _fail(path, "cannot decode 16-bit colour data")
    if arr.shape[2] == 3:
        arr = arr[..., ::-1]  # BGR -> RGB
    elif arr.shape[2] == 4:
        arr = arr[..., [2, 1, 0, 3]]  # BGRA -> RGBA
    oriented = _orient(arr, orientation)
    got = (
        oriented.shape[:2] if im.format == "TIFF" else arr.shape[:2]
    )  # Pillow's TIFF size is already oriented
    if got != (im.height, im.width):
        raise _fail(path, f"16-bit decoder gave {got[1]}x{got[0]}, header says {im.width}x{im.height}")
    return oriented


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
        except Exception:  # a broken or mismatched profile: fall back to the naive conversion
            pass
    return im.convert("RGB")


def _pixels(path: Path, im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bool, int, bool]:
    """-> (colour HxWx3 or HxW, alpha or None, grayscale, bit_depth, icc_still_valid) of a loaded image."""
    mode = im.mode
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode in ("L", "RGB") and "transparency" in im.info:
        im = im.convert("LA" if mode == "L" else "RGBA")
        mode = im.mode
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info or (im.palette and im.palette.mode == "RGBA")
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    elif mode in ("La", "RGBa"):
        im = im.convert(mode.upper())
        mode = im.mode
    elif mode in ("YCbCr", "LAB", "HSV"):
        im, mode = im.convert("RGB"), "RGB"
    if mode == "CMYK":
        return np.asarray(_cmyk_to_rgb(im)), None, False, 8, False
    if mode in ("L", "RGB"):
        return np.asarray(im), None, mode == "L", 8, True
    if mode in ("LA", "RGBA"):
        a = np.asarray(im)
        return a[..., :-1].squeeze(-1) if mode == "LA" else a[..., :3], a[..., -1], mode == "LA", 8, True
    if mode.startswith("I;16") or mode in ("I", "F"):
        return np.asarray(im), None, True, 16, True
    raise _fail(path, f"unsupported image mode {mode}")


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> LoadedImage:
    """Decode an image for the model (see the module docstring for the policies).

    Raises :class:`~invsr_cli.base.errors.ImageReadError` (one line naming the file) for a missing, empty, truncated,
    unreadable, non-image, animated or too large file.
    """
    path = Path(path)
    _check_file(path)
    with _open_file(path) as fp, _open(path, fp, max_pixels) as im:
        fmt = canonical_format(im.format or "")
        try:
            n_frames = _n_frames(im)
        except Exception as exc:
            raise _fail(path, f"unreadable frames ({describe_exception(exc)})") from None
        if n_frames > 1 and im.format != "MPO":
            raise _fail(path, f"animated image with {n_frames} frames; invsr upscales still images only")
        w, h = im.size
        _check_pixels(path, w, h, max_pixels)
        colour16 = _is_16bit_colour(im)
        rawmode = _rawmode(im)  # before load(), which clears the tile list
        orientation = _safe_orientation(im) if im.format == "TIFF" and colour16 else None
        try:
            im.load()  # decode everything now: truncation and corruption surface here
            icc = im.info.get("icc_profile") or None
            if colour16:
                if orientation is None:
                    orientation = _safe_orientation(im)
                fp.seek(0)
                arr = _decode_16bit_colour(path, fp.read(), im, orientation)
                # Pillow reports 16-bit gray+alpha PNG as RGBA; the raw mode tells
                grayscale = im.mode == "LA" or rawmode.startswith("LA")
                mode = "LA;16" if grayscale else f"{im.mode};16"
                colour = arr[..., 0] if grayscale else arr[..., :3]
                alpha = arr[..., -1] if arr.shape[2] in (2, 4) else None
                bit_depth, icc_ok = 16, True
            else:
                oriented = im if im.format == "JXL" else _exif_transpose(im)  # libjxl applied its own
                mode = oriented.mode
                colour, alpha, grayscale, bit_depth, icc_ok = _pixels(path, oriented)
            exif = _exif_bytes(im)  # last: it resets the orientation of im's cached EXIF
        except ImageReadError:
            raise
        except Image.DecompressionBombError as exc:
            raise _fail(path, f"refused as a possible decompression bomb: {exc}") from None
        except Exception as exc:
            raise _fail(path, f"cannot decode ({describe_exception(exc)})") from None

    rgb = _to_float(colour)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    return LoadedImage(
        path=path,
        rgb=np.ascontiguousarray(rgb),
        alpha=None if alpha is None else _to_float(alpha),
        grayscale=grayscale,
        bit_depth=bit_depth,
        format=fmt,
        icc=icc if icc_ok else None,
        exif=exif,
        width=rgb.shape[1],
        height=rgb.shape[0],
        mode=mode,
    )










def read_xmp(path: str | os.PathLike[str]) -> bytes | None:
    """The XMP packet stored in an image file, or None. Raises :class:`ImageReadError` for a file that is not a
    readable image. JPEG XL: from its ``xml `` box (the plugin does not expose XMP), which means decoding it."""
    path = Path(path)
    _check_file(path)
    with _open_file(path) as fp, _open(path, fp) as im:
        if im.format == "JXL":
            import pillow_jxl

            fp.seek(0)
            try:
                boxes = pillow_jxl.Decoder()(fp.read())[4]
            except Exception as exc:
                raise _fail(path, f"cannot decode ({describe_exception(exc)})") from None
            found = [bytes(b.data) for b in boxes if b.box_type == b"xml "]
            return found[0] if found else None
        xmp = im.info.get("xmp")
        if xmp is None and im.format == "PNG":  # a tEXt chunk (OpenCV), or a chunk after the pixels
            try:
                im.load()
            except Exception as exc:
                raise _fail(path, f"cannot decode ({describe_exception(exc)})") from None
            xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    return xmp or None
