"""A generated corpus of damaged and hostile inputs, mixed with good images (no files shipped).

``build_corpus(root, seed)`` fills ``root`` and returns a :class:`Corpus`: every entry's path (bytes, so
non-UTF-8 names survive) with its category and what the reader must do with it:

* ``"good"``: must be upscaled (decodes, 4x size);
* ``"bad"``: must be reported failed with a reason;
* ``"maybe"``: damaged, but the damage may land where no decoder looks (a bit flip in pixel data, a truncation
  inside trailing metadata): either reported failed or written as a valid 4x image;
* ``"not_input"``: not an input at all (a folder named ``x.jpg``): neither done nor failed.

Everything is deterministic for a given seed.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tests import imagegen

SOURCE_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "tiff": "TIFF", "bmp": "BMP", "gif": "GIF"}


@dataclass
class Entry:
    path: bytes  # absolute, os.fsencode'd
    category: str  # e.g. "truncated", "header-bitflip", "good"
    expect: str  # "good" | "bad" | "maybe" | "not_input"
    size: tuple[int, int] | None = None  # (width, height) of a good image


@dataclass
class Corpus:
    root: Path
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, path: str | bytes | os.PathLike, category: str, expect: str, size=None) -> None:
        self.entries.append(Entry(os.fsencode(os.path.abspath(os.fsdecode(path))), category, expect, size))

    def counts(self) -> Counter:
        return Counter(e.category for e in self.entries)

    def by_expect(self, expect: str) -> list[Entry]:
        return [e for e in self.entries if e.expect == expect]


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if fmt == "GIF":
        im = im.convert("P")
    im.save(buf, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_with_size(w: int, h: int) -> bytes:
    """A 100-byte PNG whose header claims w x h (valid CRCs; a tiny IDAT that cannot fill it)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _gif_with_size(w: int, h: int) -> bytes:
    return (b"GIF89a" + struct.pack("<HH", w, h) + b"\x00\x00\x00"
            + b"\x2c" + struct.pack("<HHHH", 0, 0, w, h) + b"\x00" + b"\x02\x02\x44\x01\x00" + b"\x3b")


def _bmp_with_size(w: int, h: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54 + 16, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 16, 2835, 2835, 0, 0)
    return header + info + b"\0" * 16


def _jpeg_with_size(src: bytes, w: int, h: int) -> bytes:
    """Patch the SOF0/SOF2 frame size of a real JPEG."""
    data = bytearray(src)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        i = data.find(marker)
        if i >= 0:
            data[i + 5:i + 9] = struct.pack(">HH", h, w)
            return bytes(data)
    raise ValueError("no SOF marker")


def _tiff_with_size(src: bytes, w: int, h: int) -> bytes:
    """Patch ImageWidth/ImageLength of a little-endian TIFF's first IFD (the strip stays small)."""
    data = bytearray(src)
    if data[:2] != b"II":
        raise ValueError("expected a little-endian TIFF")
    ifd = struct.unpack_from("<I", data, 4)[0]
    n = struct.unpack_from("<H", data, ifd)[0]
    for k in range(n):
        at = ifd + 2 + 12 * k
        tag, typ = struct.unpack_from("<HH", data, at)
        if tag in (256, 257):
            value = w if tag == 256 else h
            if typ == 3:
                if value > 65535:
                    value = 65535
                struct.pack_into("<HHIH", data, at, tag, 3, 1, value)
            else:
                struct.pack_into("<HHII", data, at, tag, 4, 1, value)
    return bytes(data)


def build_corpus(root: Path, seed: int = 0, n_good: int = 20, n_truncated: int = 130, n_header_flips: int = 100,
                 n_pixel_flips: int = 30) -> Corpus:
    """Fill ``root`` (created) with the corpus; see the module docstring."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    c = Corpus(root)

    # -- good images (small: one 32x32 tile each) ------------------------------------------------------------
    good = root / "good"
    good.mkdir()
    exts = ["png", "jpg", "webp", "tiff", "bmp"]
    for i in range(n_good):
        ext = exts[i % len(exts)]
        w, h = 24 + 2 * (i % 5), 16 + 2 * (i % 4)
        path = good / f"good_{i:02d}.{ext}"
        imagegen.rgb(path, w, h, seed=100 + i, **({"quality": 92} if ext in ("jpg", "webp") else {}))
        c.add(path, "good", "good", (w, h))

    # small, valid sources to damage
    sources = {ext: _encode(imagegen._pattern(24, 16, seed=i), fmt) for i, (ext, fmt) in
               enumerate(SOURCE_FORMATS.items())}
    names = list(sources)

    # -- truncated at random offsets ---------------------------------------------------------------------------
    d = root / "truncated"
    d.mkdir()
    for i in range(n_truncated):
        ext = names[i % len(names)]
        src = sources[ext]
        cut = int(rng.integers(1, len(src)))
        path = d / f"trunc_{i:03d}.{ext}"
        path.write_bytes(src[:cut])
        # the last bytes of some formats are trailers no decoder needs (PNG IEND, GIF ';', JPEG EOI)
        c.add(path, "truncated", "bad" if cut < len(src) - 16 else "maybe")

    # -- bit flips in the header (first 64 bytes) ---------------------------------------------------------------
    d = root / "header_flip"
    d.mkdir()
    for i in range(n_header_flips):
        ext = names[i % len(names)]
        data = bytearray(sources[ext])
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, min(64, len(data))))
            data[pos] ^= 1 << int(rng.integers(0, 8))
        path = d / f"hflip_{i:03d}.{ext}"
        path.write_bytes(bytes(data))
        c.add(path, "header-bitflip", "maybe")  # some header bytes are ignored by decoders (e.g. a PNG's CRC)

    # -- bit flips past the header (pixel data): many still decode --------------------------------------------
    d = root / "pixel_flip"
    d.mkdir()
    for i in range(n_pixel_flips):
        ext = names[i % len(names)]
        data = bytearray(sources[ext])
        pos = int(rng.integers(min(64, len(data) - 1), len(data)))
        data[pos] ^= 1 << int(rng.integers(0, 8))
        path = d / f"pflip_{i:03d}.{ext}"
        path.write_bytes(bytes(data))
        c.add(path, "pixel-bitflip", "maybe")

    # -- zero-byte, text, HTML, other formats under image names ---------------------------------------------------
    d = root / "misc"
    d.mkdir()
    for ext in [*names, "jpeg"]:
        (d / f"empty_{ext}.{ext}").write_bytes(b"")
        c.add(d / f"empty_{ext}.{ext}", "zero-byte", "bad")
    texts = {
        "text.png": b"this is a text file, not a PNG\n",
        "html.jpg": b"<!doctype html><html><body>404 Not Found</body></html>\n",
        "json.webp": b'{"not": "an image"}\n',
        "script.tiff": b"#!/bin/sh\necho pwned\n",
        "eps.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "svg.png": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>\n',
        "pdf.jpg": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
        "zeros_bmp.bmp": b"\0" * 4096,
        "random_gif.gif": rng.integers(0, 256, 2048, dtype=np.uint8).tobytes(),
        "magic_png.png": b"\x89PNG\r\n\x1a\n",
        "magic_jpg.jpg": b"\xff\xd8\xff",
        "magic_gif.gif": b"GIF89a",
    }
    for name, data in texts.items():
        (d / name).write_bytes(data)
        c.add(d / name, "not-an-image", "bad")
    # an animated GIF: every frame upscaled (invsr_cli.imaging.animation); the same cut short in its last frame: refused
    frames = [Image.fromarray(imagegen._pattern(16, 16, seed=k)).convert("P") for k in range(3)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    c.add(d / "animated.gif", "animated", "good", (16, 16))
    (d / "animated_cut.gif").write_bytes((d / "animated.gif").read_bytes()[:-40])
    c.add(d / "animated_cut.gif", "animated", "bad")

    # -- huge dimensions in a small header -------------------------------------------------------------------------
    d = root / "huge"
    d.mkdir()
    huge = {
        "png_100k.png": _png_with_size(100_000, 100_000),
        "png_wide.png": _png_with_size(2**31 - 1, 1),
        "png_12mp.png": _png_with_size(4000, 3000),  # over the default --max-pixels, under Pillow's bomb limit
        "gif_max.gif": _gif_with_size(65535, 65535),
        "bmp_50k.bmp": _bmp_with_size(50_000, 50_000),
        "bmp_neg.bmp": _bmp_with_size(40_000, -40_000),
        "jpg_65k.jpg": _jpeg_with_size(sources["jpg"], 65000, 65000),
        "jpg_4k.jpg": _jpeg_with_size(sources["jpg"], 4000, 3000),
        "tiff_huge.tiff": _tiff_with_size(sources["tiff"], 100_000, 100_000),
    }
    for name, data in huge.items():
        (d / name).write_bytes(data)
        c.add(d / name, "huge-dimensions", "bad")

    # -- filesystem oddities -------------------------------------------------------------------------------------
    d = root / "fs"
    d.mkdir()
    (d / "x.jpg").mkdir()  # a folder named like an image: walked as a folder, it holds nothing
    c.add(d / "x.jpg", "folder-named-x.jpg", "not_input")
    os.symlink("loop.png", d / "loop.png")  # a file symlink pointing at itself
    c.add(d / "loop.png", "symlink-loop", "bad")
    os.symlink("loop_b.jpg", d / "loop_a.jpg")
    os.symlink("loop_a.jpg", d / "loop_b.jpg")
    c.add(d / "loop_a.jpg", "symlink-loop", "bad")
    c.add(d / "loop_b.jpg", "symlink-loop", "bad")
    (d / "sub").mkdir()
    os.symlink("..", d / "sub" / "up")  # a folder symlink loop: the walk must end
    os.symlink("/nonexistent/nowhere.png", d / "dangling.png")
    c.add(d / "dangling.png", "dangling-symlink", "bad")
    os.mkfifo(d / "fifo.png")  # opening it would block forever
    c.add(d / "fifo.png", "fifo", "bad")
    if os.path.exists("/dev/zero"):
        os.symlink("/dev/zero", d / "devzero.jpg")  # an endless character device
        c.add(d / "devzero.jpg", "device", "bad")
    # unreadable permissions: a real EACCES only when not root (root reads mode-000 files)
    for i in range(3):
        path = d / f"noperm_{i}.png"
        imagegen.rgb(path, 20, 12, seed=300 + i)
        os.chmod(path, 0)
        c.add(path, "mode-000", "bad" if os.geteuid() != 0 else "maybe")
    if os.geteuid() == 0:
        c.notes.append("running as root: mode-000 files are readable, so they may decode (counted as 'maybe'); "
                       "EACCES is tested in-process by test_permission_denied_is_a_reason")

    # -- non-UTF-8 names: good and bad ----------------------------------------------------------------------------
    d = root / "bytes"
    d.mkdir()
    raw = os.fsencode(d)
    for i in range(3):
        name = raw + b"/good_\xff\xfe" + bytes([0x80 + i]) + b".png"
        imagegen.rgb(Path(os.fsdecode(name)), 20, 12, seed=400 + i)
        c.add(name, "non-utf8-name-good", "good", (20, 12))
    for i in range(3):
        name = raw + b"/bad_\xc3\x28" + bytes([0x90 + i]) + b".jpg"
        with open(name, "wb") as f:
            f.write(sources["jpg"][: 50 + 10 * i])
        c.add(name, "non-utf8-name-bad", "bad")
    name = raw + b"/ctrl_\x1b[31m_\x07.png"  # terminal escapes in a name
    with open(name, "wb") as f:
        f.write(b"not an image")
    c.add(name, "control-chars-name", "bad")
    return c
