"""Formats (AVIF, JPEG XL, HEIC), lossless, metadata per format, provenance, --strip-metadata, `invsr inspect`.

The optional plugins (pillow-heif, pillow-jxl-plugin) are installed by `make install` (the `formats` extra); the
missing-extra behaviour is tested for real, in a subprocess where the plugin cannot be imported.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import pillow_heif
import pillow_jxl  # noqa: F401  (registers JXL with Pillow; the tests need the extra)
import pytest
from PIL import Image, ImageCms

from invsr_cli.base.errors import ConfigError, ImageReadError
from invsr_cli.imaging import decode as imageio
from invsr_cli.imaging.decode import LoadedImage, read_image
from invsr_cli.imaging.encode import write_image
from invsr_cli.imaging.provenance import NAMESPACE, from_xmp, provenance_record, read_provenance, to_xmp
from invsr_cli.run.discover import IMAGE_EXTENSIONS, output_name
from invsr_cli.settings.settings import resolve_settings
from tests.harness import invsr

pillow_heif.register_heif_opener()  # the fixtures below save HEIF; pillow_jxl registers itself on import
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
RNG = np.random.default_rng(12)
FORMATS = ("png", "jpg", "webp", "tiff", "avif", "jxl")
LOSSY_TOLERANCE = {"jpg": 6, "webp": 8, "avif": 8, "jxl": 6}  # mean abs error in 8-bit levels, at quality 95


def _smooth(h: int, w: int, c: int) -> np.ndarray:
    """A smooth uint8 image (lossy codecs at quality 95 stay within a few levels of it)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    planes = [(np.sin(x / 5 + k) * np.cos(y / 7 - k) * 0.45 + 0.5) for k in range(c)]
    return np.rint(np.dstack(planes) * 255).astype(np.uint8)


def _exif_make(make: str = "InvCam") -> bytes:
    ex = Image.Exif()
    ex[0x010F] = make
    ex[0x0112] = 1
    return ex.tobytes()


def _source(tmp_path: Path, arr: np.ndarray, **save) -> LoadedImage:
    path = tmp_path / "src.png"
    Image.fromarray(arr).save(path, **save)
    return read_image(path)


def _meta(path: Path) -> dict:
    """Every metadata block a reader finds: icc, exif (Make), xmp (any packet). JPEG XL: libjxl describes the
    codestream's colour encoding as a generated profile on reading, which is not a stored block."""
    with Image.open(path) as im:
        im.load()
        info = dict(im.info)
        make = im.getexif().get(0x010F)
    icc = info.get("icc_profile") or None
    if path.suffix == ".jxl" and icc is not None:
        desc = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()
        icc = f"libjxl:{desc}"
    return {"icc": icc, "make": make, "xmp": imageio.read_xmp(path)}


REC = provenance_record(
    {"preset": "blur", "timesteps": [250, 200, 150, 100, 50], "steps": 5, "seed": 7, "posterior": "mean",
     "guidance": 1.0, "tile": 128, "overlap": 32, "blend": "gaussian", "color_fix": "wavelet", "scale": 4.0,
     "dtype": "fp16", "sd_model": "stabilityai/sd-turbo", "noise_predictor": None, "format": "png"},
    models={"sd_model": "stabilityai/sd-turbo@abc123", "noise_predictor": "OAOA/InvSR:noise_predictor_sd_turbo_v5.pth"},
)


# ----------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["rgb", "rgba", "gray"])
def test_round_trip_size_mode_alpha(tmp_path, fmt, kind):
    channels = {"rgb": 3, "rgba": 4, "gray": 1}[kind]
    arr = _smooth(24, 40, channels)
    if kind == "rgba":
        arr[..., 3] = np.linspace(0, 255, 40, dtype=np.uint8)[None, :]
    src = _source(tmp_path, arr[..., 0] if kind == "gray" else arr)
    out = tmp_path / f"o.{fmt}"
    write_image(out, src.rgb, alpha=src.alpha, source=src, format=fmt)
    back = read_image(out)
    assert back.format == fmt and (back.width, back.height) == (40, 24)
    expected_mode = {"rgb": "RGB", "rgba": "RGBA", "gray": "L"}[kind]
    if fmt == "jpg" and kind == "rgba":
        expected_mode = "RGB"  # composited over white
    if fmt == "webp" and kind == "gray":
        expected_mode = "RGB"  # WebP has no grayscale
    assert back.mode == expected_mode
    assert (back.alpha is not None) == (expected_mode == "RGBA")
    if fmt == "jpg" and kind == "rgba":
        return
    err = np.abs(back.rgb - src.rgb).mean() * 255
    if fmt in ("png", "tiff"):
        assert err == 0
    else:
        assert err < LOSSY_TOLERANCE[fmt], err
    if back.alpha is not None:
        assert np.abs(back.alpha - src.alpha).mean() * 255 < LOSSY_TOLERANCE.get(fmt, 0.01)


def test_16bit_where_the_format_has_it(tmp_path):
    gray16 = RNG.integers(0, 65536, (10, 12), dtype=np.uint16)
    src = _source(tmp_path, gray16)
    assert src.bit_depth == 16
    # JPEG XL: 8-bit, because pillow-jxl-plugin would tag 16-bit gray as linear light (see imagewrite)
    for fmt, depth in (("png", 16), ("tiff", 16), ("jxl", 8), ("avif", 8), ("webp", 8), ("jpg", 8)):
        out = tmp_path / f"g16.{fmt}"
        write_image(out, src.rgb, source=src, format=fmt, lossless=fmt in ("jxl", "webp"))
        back = read_image(out)
        assert back.bit_depth == depth, fmt
        if depth == 16:  # lossless 16-bit: every sample back exactly
            np.testing.assert_array_equal(back.rgb, src.rgb, err_msg=fmt)


# ----------------------------------------------------------------------------------------- ICC and EXIF


@pytest.mark.parametrize("fmt", FORMATS)
def test_icc_and_exif_survive_each_format(tmp_path, fmt):
    src = _source(tmp_path, _smooth(16, 16, 3), icc_profile=SRGB, exif=_exif_make())
    assert src.icc == SRGB and src.exif
    out = tmp_path / f"o.{fmt}"
    write_image(out, src.rgb, source=src, format=fmt)
    meta = _meta(out)
    assert meta["make"] == "InvCam"
    if fmt == "jxl":  # pillow-jxl-plugin cannot embed ICC: the pixels are converted to sRGB instead
        assert meta["icc"] == "libjxl:sRGB"
    else:
        assert meta["icc"] == SRGB


def _camera_exif() -> bytes:
    """What every camera JPEG carries: main-IFD text tags, an Exif sub-IFD and a GPS sub-IFD."""
    ex = Image.Exif()
    ex[0x010F], ex[0x0110], ex[0x0132] = "InvCam", "Model X", "2024:01:01 10:00:00"
    ex[0x8769] = {0x9003: "2024:01:01 10:00:00", 0x829A: 0.01}  # DateTimeOriginal, ExposureTime
    ex[0x8825] = {1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 21.0, 3.0)}  # GPS latitude/longitude
    return ex.tobytes()


# What each writer can really hold of _camera_exif(): TIFF keeps EXIF's main-IFD tags only (no writer here can
# write the Exif and GPS sub-IFDs into a TIFF); JPEG XL no ICC (the pixels are converted to sRGB instead).
_HOLDS_SUB_IFDS = {"png", "jpg", "webp", "avif", "jxl"}
_CAMERA_CASES = [(f, "rgb8") for f in FORMATS] + [(f, k) for f in ("png", "tiff") for k in ("rgb16", "gray16")]


@pytest.mark.parametrize(("fmt", "kind"), _CAMERA_CASES)
def test_camera_metadata_is_kept_where_the_format_holds_it_and_never_fails(tmp_path, fmt, kind):
    """Issue 19, item 1: an 8-bit TIFF of a camera photo failed after the whole compute ("Error setting from
    dictionary"). Every writable format, 8 and 16-bit: EXIF with Exif and GPS sub-IFDs, ICC and XMP."""
    from invsr_cli.imaging.encode import check_writable

    if kind == "rgb8":
        src = _source(tmp_path, _smooth(16, 16, 3))
    else:
        arr = RNG.integers(0, 65536, (16, 16, 3 if kind == "rgb16" else 1), dtype=np.uint16)
        path = tmp_path / "src16.png"
        assert cv2.imwrite(str(path), arr[..., ::-1] if kind == "rgb16" else arr[..., 0])
        src = read_image(path)
        assert src.bit_depth == 16
    src = LoadedImage(**{**src.__dict__, "icc": SRGB, "exif": _camera_exif()})
    out = tmp_path / f"o.{fmt}"
    check_writable(out, source=src, format=fmt, provenance=REC)  # the check before compute passes ...
    write_image(out, src.rgb, source=src, format=fmt, provenance=REC)  # ... and so does the write after it
    assert read_image(out).bit_depth == (16 if kind != "rgb8" else 8)
    with Image.open(out) as im:
        exif = im.getexif()
        main = {t: exif.get(t) for t in (0x010F, 0x0110, 0x0132)}
        sub, gps = dict(exif.get_ifd(0x8769)), dict(exif.get_ifd(0x8825))
    assert main == {0x010F: "InvCam", 0x0110: "Model X", 0x0132: "2024:01:01 10:00:00"}
    if fmt in _HOLDS_SUB_IFDS:
        assert sub.get(0x9003) == "2024:01:01 10:00:00" and gps.get(1) == "N" and gps.get(2) == (48.0, 51.0, 30.0)
    else:
        assert sub == {} and gps == {}
    assert _meta(out)["icc"] == ("libjxl:sRGB" if fmt == "jxl" else SRGB)
    assert read_provenance(out) == REC


def test_a_tifffile_shape_note_is_not_carried_over_as_a_description(tmp_path):
    """Issue 19, item 7: tifffile's ImageDescription ({"shape": [h, w, 3]}) describes the source's array; it
    must not reappear in the upscaled output stating the old shape. A real description is kept."""
    import tifffile

    arr = RNG.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "shaped.tif", arr, photometric="rgb")  # tifffile's own shape note
    tifffile.imwrite(tmp_path / "described.tif", arr, photometric="rgb", description="harbour at dawn",
                     metadata=None)
    for name, want in (("shaped.tif", None), ("described.tif", "harbour at dawn")):
        src = read_image(tmp_path / name)
        out = tmp_path / f"o_{name}"
        up = np.repeat(np.repeat(src.rgb, 2, axis=0), 2, axis=1)
        write_image(out, up, source=src, format="tiff")
        with tifffile.TiffFile(out) as tif:
            tags = tif.pages[0].tags
            assert (tags["ImageDescription"].value if "ImageDescription" in tags else None) == want, name
            assert tif.pages[0].shape == (12, 14, 3)


def _swapped_primaries_profile() -> bytes:
    """sRGB with its red and green primaries exchanged: a valid RGB profile under which (255, 0, 0) is green."""
    icc = bytearray(SRGB)
    count = int.from_bytes(icc[128:132], "big")
    entries = {bytes(icc[132 + 12 * i: 136 + 12 * i]): 132 + 12 * i for i in range(count)}
    r, g = entries[b"rXYZ"], entries[b"gXYZ"]
    icc[r + 4: r + 12], icc[g + 4: g + 12] = icc[g + 4: g + 12], icc[r + 4: r + 12]
    return bytes(icc)


def test_jxl_converts_a_profiled_source_to_srgb(tmp_path):
    """pillow-jxl-plugin cannot embed the profile, so the colours are converted rather than misread as sRGB."""
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[..., 0] = 255
    src = _source(tmp_path, arr, icc_profile=_swapped_primaries_profile())
    write_image(tmp_path / "o.jxl", src.rgb, source=src, format="jxl", lossless=True)
    write_image(tmp_path / "o.png", src.rgb, source=src, format="png")
    r, g, _ = read_image(tmp_path / "o.jxl").rgb[4, 4]
    assert g > 0.9 and r < 0.1, (r, g)  # what the profiled pixel looks like
    assert read_image(tmp_path / "o.png").rgb[4, 4, 0] == 1  # png keeps pixels and profile as they were


@pytest.mark.parametrize(("name", "channels"), [("g.png", 1), ("c.png", 3), ("a.png", 4), ("g.tif", 1),
                                                 ("c.tif", 3), ("a.tif", 4)])
def test_icc_and_exif_survive_16bit_outputs(tmp_path, name, channels):
    """The library encoders that replaced the hand-written 16-bit PNG/TIFF ones keep both blocks."""
    arr = RNG.integers(0, 65536, (6, 7, channels), dtype=np.uint16)
    path = tmp_path / "src16.png"
    assert cv2.imwrite(str(path), arr[..., [2, 1, 0, 3][:channels]] if channels > 1 else arr[..., 0])
    src = read_image(path)
    src = LoadedImage(**{**src.__dict__, "icc": SRGB, "exif": _exif_make("Deep")})
    assert src.bit_depth == 16
    out = tmp_path / name
    write_image(out, src.rgb, alpha=src.alpha, source=src, format=name.split(".")[1], provenance=REC)
    back = read_image(out)
    assert back.bit_depth == 16
    np.testing.assert_array_equal(back.rgb, src.rgb)
    meta = _meta(out)
    assert meta["make"] == "Deep"
    assert meta["icc"] == SRGB
    assert read_provenance(out) == REC


# ----------------------------------------------------------------------------------------- lossless


@pytest.mark.parametrize("fmt", ["webp", "jxl"])
def test_lossless_is_exact_and_lossy_is_not(tmp_path, fmt):
    arr = RNG.integers(0, 256, (16, 20, 4), dtype=np.uint8)  # noise, transparent pixels included
    src = _source(tmp_path, arr)
    write_image(tmp_path / f"l.{fmt}", src.rgb, alpha=src.alpha, source=src, format=fmt, lossless=True)
    write_image(tmp_path / f"q.{fmt}", src.rgb, alpha=src.alpha, source=src, format=fmt, quality=90)
    with Image.open(tmp_path / f"l.{fmt}") as im:
        np.testing.assert_array_equal(np.asarray(im), arr)  # colour under alpha 0 too
    with Image.open(tmp_path / f"q.{fmt}") as im:
        assert not np.array_equal(np.asarray(im), arr)


@pytest.mark.parametrize("fmt", ["jpg", "avif"])
def test_lossless_is_refused_where_the_codec_has_none(tmp_path, fmt):
    src = _source(tmp_path, _smooth(8, 8, 3))
    with pytest.raises(ConfigError, match=f"x.{fmt}: {fmt} has no lossless mode"):
        write_image(tmp_path / f"x.{fmt}", src.rgb, source=src, format=fmt, lossless=True)
    assert not (tmp_path / f"x.{fmt}").exists()
    with pytest.raises(ConfigError, match="`lossless` needs a format with a lossless mode"):
        resolve_settings(None, {"format": fmt, "lossless": True})


def test_lossless_changes_the_fingerprint_but_defaults_do_not():
    base = resolve_settings(None, {})
    assert resolve_settings(None, {"provenance": True}).output_fingerprint() == base.output_fingerprint()
    for flag in ("lossless", "strip_metadata"):
        assert resolve_settings(None, {flag: True}).output_fingerprint() != base.output_fingerprint()
    assert resolve_settings(None, {"provenance": False}).output_fingerprint() != base.output_fingerprint()


# ----------------------------------------------------------------------------------------- provenance, stripping


@pytest.mark.parametrize("fmt", FORMATS)
def test_provenance_written_and_read_back(tmp_path, fmt):
    src = _source(tmp_path, _smooth(8, 8, 3), exif=_exif_make())
    write_image(tmp_path / f"p.{fmt}", src.rgb, source=src, format=fmt, provenance=REC)
    assert read_provenance(tmp_path / f"p.{fmt}") == REC
    write_image(tmp_path / f"n.{fmt}", src.rgb, source=src, format=fmt)  # --no-provenance
    assert read_provenance(tmp_path / f"n.{fmt}") is None
    assert _meta(tmp_path / f"n.{fmt}")["make"] == "InvCam"  # only ours is dropped


@pytest.mark.parametrize(("fmt", "deep"), [(f, False) for f in FORMATS] + [("png", True), ("tiff", True)])
def test_strip_metadata_leaves_none(tmp_path, fmt, deep):
    arr = RNG.integers(0, 65536, (6, 7, 3), dtype=np.uint16) if deep else _smooth(6, 7, 3)
    path = tmp_path / "src.png"
    assert cv2.imwrite(str(path), arr[..., ::-1])
    src = LoadedImage(**{**read_image(path).__dict__, "icc": SRGB, "exif": _exif_make()})
    out = tmp_path / f"s.{fmt}"
    write_image(out, src.rgb, source=src, format=fmt, provenance=REC, strip_metadata=True)
    assert _meta(out) == {"icc": "libjxl:sRGB" if fmt == "jxl" else None, "make": None, "xmp": None}
    with Image.open(out) as im:
        im.load()
        left = {k for k in im.info if k in ("icc_profile", "exif", "xmp", "XML:com.adobe.xmp")} - {
            "icc_profile" if fmt == "jxl" else ""}
        tags = set(im.getexif())
        if fmt == "tiff":  # a TIFF's IFD0 is also its own layout (size, strips): none of these may be there
            tags &= {0x010F, 0x0110, 0x8769, 0x8825, 700, 34675}
        assert not left and not tags
    data = out.read_bytes()
    assert NAMESPACE.encode() not in data and b"InvCam" not in data and b"sRGB" not in data


def test_xmp_record_parsing_is_tolerant():
    assert from_xmp(to_xmp(REC)) == REC
    attr = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description xmlns:invsr="{NAMESPACE}" invsr:record=\'{{"seed": 3}}\'/></rdf:RDF></x:xmpmeta>')
    assert from_xmp(attr) == {"seed": 3}  # a tool rewrote the property as an attribute
    assert from_xmp(b"<x:xmpmeta>not closed") is None
    assert from_xmp(to_xmp({}).replace(b"{}", b"[1]")) is None
    assert from_xmp(None) is None
    record = provenance_record({"sd_model": "caf\u00e9/model", "seed": 1})
    assert to_xmp(record).isascii() and from_xmp(to_xmp(record)) == record


# ----------------------------------------------------------------------------------------- reading HEIC, AVIF, JXL


def test_heic_is_read_with_its_metadata(tmp_path):
    arr = _smooth(32, 48, 4)
    path = tmp_path / "phone.heic"
    Image.fromarray(arr).save(path, "HEIF", quality=95, icc_profile=SRGB, exif=_exif_make("Phone"))
    img = read_image(path)
    assert img.format == "heic" and (img.width, img.height) == (48, 32) and img.alpha is not None
    assert img.icc == SRGB and b"Phone" in img.exif
    assert np.abs(img.rgb * 255 - arr[..., :3]).mean() < 8


def test_rotated_heic_is_upright_once(tmp_path):
    """pillow-heif applies the HEIF transform and resets EXIF orientation: no second rotation by us."""
    ex = Image.Exif()
    ex[0x0112] = 6  # 90 degrees clockwise
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:, :16] = 255  # left half white
    Image.fromarray(arr).save(tmp_path / "rot.heic", "HEIF", quality=95, exif=ex.tobytes())
    img = read_image(tmp_path / "rot.heic")
    assert (img.width, img.height) == (16, 32)
    assert img.rgb[:14].mean() > 0.9 and img.rgb[18:].mean() < 0.1  # the white half is now on top
    exif = Image.Exif()
    exif.load(img.exif)
    assert exif.get(0x0112, 1) == 1


@pytest.mark.parametrize(("fmt", "name"), [("AVIF", "avif"), ("HEIF", "heic"), ("JXL", "jxl")])
def test_probe_reads_new_formats(tmp_path, fmt, name):
    Image.fromarray(_smooth(12, 20, 4)).save(tmp_path / f"p.{name}", fmt)
    assert imageio.probe_image(tmp_path / f"p.{name}") == imageio.ImageInfo(20, 12, name, "RGBA", 1)


@pytest.mark.parametrize("container", [False, True])
def test_jxl_size_header_matches_the_decoder(container):
    """Sizes that exercise each SizeHeader branch: multiples of 8 (small and large), each aspect ratio code,
    and each of the four U32 widths."""
    sizes = [(8, 8), (256, 64), (96, 80), (64, 48), (48, 32), (64, 36), (40, 32), (128, 64), (7, 3), (600, 1),
             (9000, 2), (3, 300000)]
    for w, h in sizes:
        buf = io.BytesIO()
        Image.new("L", (w, h)).save(buf, "JXL", lossless=True, use_container=container, effort=1)
        assert imageio._jxl_size(buf.getvalue()) == (w, h), (w, h, container)
        with Image.open(buf) as im:
            assert im.size == (w, h)


def test_huge_jxl_is_refused_from_its_header_before_decoding(tmp_path):
    fields = ((1, 0), (2, 3), (30, 100000 - 1), (3, 0), (2, 3), (30, 100000 - 1))
    value, pos = 0, 0
    for n, v in fields:
        value |= v << pos
        pos += n
    path = tmp_path / "bomb.jxl"
    path.write_bytes(b"\xff\x0a" + value.to_bytes(9, "little") + b"\x00" * 64)
    assert imageio._jxl_size(path.read_bytes()) == (100000, 100000)
    with pytest.raises(ImageReadError, match="bomb.jxl: refused as a possible decompression bomb: JPEG XL header "
                       "says 100000x100000"):
        read_image(path)
    small = tmp_path / "big.jxl"
    Image.new("L", (4000, 3000)).save(small, "JXL", lossless=True, effort=1)
    with pytest.raises(ImageReadError, match=r"4000x3000 = 12000000 px \(12.0 MP\) exceeds --max-pixels "
                       r"8000000 px \(8.0 MP\)"):
        imageio.probe_image(small, max_pixels=8_000_000)


def _write_plugin_files(tmp_path: Path) -> dict[str, Path]:
    files = {"heif": tmp_path / "a.heic", "jxl": tmp_path / "b.jxl"}
    Image.fromarray(_smooth(8, 8, 3)).save(files["heif"], "HEIF")
    Image.fromarray(_smooth(8, 8, 3)).save(files["jxl"], "JXL")
    return files


@pytest.mark.parametrize("extra", ["heif", "jxl"])
@pytest.mark.slow
def test_missing_extra_is_reported_with_the_pip_command(tmp_path, extra):
    """In a fresh interpreter where the plugin cannot be imported (as if not installed)."""
    path = _write_plugin_files(tmp_path)[extra]
    module = {"heif": "pillow_heif", "jxl": "pillow_jxl"}[extra]
    script = (f"import sys; sys.modules[{module!r}] = None\n"
              "from invsr_cli.imaging.decode import read_image\n"
              "from invsr_cli.base.errors import ImageReadError\n"
              f"try:\n    read_image({str(path)!r})\nexcept ImageReadError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(f"needs `pip install 'invsr-cli[{extra}]'`"), out.stdout
    assert path.name in out.stdout and "corrupt" not in out.stdout


@pytest.mark.slow
def test_missing_extra_through_the_cli(tmp_path):
    """`invsr upscale --dry-run` with a shim on PYTHONPATH that makes both plugins unimportable."""
    files = _write_plugin_files(tmp_path)
    shim = tmp_path / "shim"
    shim.mkdir()
    for module in ("pillow_heif", "pillow_jxl"):
        (shim / f"{module}.py").write_text("raise ImportError('hidden by the test')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}
    p = invsr(["upscale", files["heif"], files["jxl"], tmp_path / "out", "--dry-run"], text=True, env=env,
              timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    text = p.stdout + p.stderr
    assert "a.heic: HEIC/HEIF image: needs `pip install 'invsr-cli[heif]'`" in text
    assert "b.jxl: JPEG XL image: needs `pip install 'invsr-cli[jxl]'`" in text


def test_jxl_codestream_orientation_wins_over_exif(tmp_path):
    """libjxl applies the codestream's orientation; an EXIF orientation in a JXL box must not rotate again."""
    ex = Image.Exif()
    ex[0x0112] = 6
    Image.fromarray(_smooth(8, 16, 3)).save(tmp_path / "r.jxl", "JXL", lossless=True, exif=ex.tobytes())
    img = read_image(tmp_path / "r.jxl")
    assert (img.width, img.height) == (16, 8)
    exif = Image.Exif()
    exif.load(img.exif)
    assert exif.get(0x0112) == 1


# ----------------------------------------------------------------------------------------- discovery


def test_extensions_and_auto_output_formats():
    assert {".avif", ".heic", ".heif", ".jxl"} <= IMAGE_EXTENSIONS
    cases = {"a.avif": ("a.avif", "avif"), "b.JXL": ("b.JXL", "jxl"), "c.heic": ("c.jpg", "jpg"),
             "d.HEIF": ("d.jpg", "jpg"), "e.jpg": ("e.jpg", "jpg")}
    for name, expected in cases.items():
        out, fmt = output_name(PurePosixPath(name))
        assert (out.name, fmt) == expected, name
    lossless = {"e.jpg": "png", "a.avif": "png", "c.heic": "png", "f.webp": "webp", "b.jxl": "jxl"}
    for name, fmt in lossless.items():
        assert output_name(PurePosixPath(name), lossless=True)[1] == fmt, name
    assert output_name(PurePosixPath("e.jpg"), fmt="jxl", lossless=True)[0].name == "e.jxl"


# ----------------------------------------------------------------------------------------- invsr inspect


def _run(*args, env=None):
    return invsr(args, text=True, timeout=120, env=env)


@pytest.mark.slow
def test_inspect_reads_every_format(tmp_path):
    src = _source(tmp_path, _smooth(8, 8, 3))
    files = [tmp_path / f"p.{fmt}" for fmt in FORMATS]
    for path in files:
        write_image(path, src.rgb, source=src, format=path.suffix[1:], provenance=REC)
    p = _run("inspect", "--json", *files)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(f) for f in files]
    assert all(r["provenance"] == REC and r["error"] is None for r in rows), rows


@pytest.mark.slow
def test_inspect_prints_the_record_and_json(tmp_path):
    src = _source(tmp_path, _smooth(8, 8, 3))
    write_image(tmp_path / "p.webp", src.rgb, source=src, format="webp", provenance=REC)
    p = _run("inspect", tmp_path / "p.webp", tmp_path / "src.png")
    assert p.returncode == 0, p.stderr
    assert "p.webp:" in p.stdout and "seed             7" in p.stdout and "stabilityai/sd-turbo@abc123" in p.stdout
    assert "src.png: no invsr provenance record" in p.stdout
    p = _run("inspect", "--json", tmp_path / "p.webp", tmp_path / "gone.png")
    assert p.returncode == 1
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert rows[0]["provenance"] == REC and rows[0]["error"] is None
    assert rows[1]["provenance"] is None and "gone.png: no such file" in rows[1]["error"]


@pytest.mark.slow
def test_upscale_records_provenance_end_to_end(tmp_path, tiny_models):
    """The real executable with the tiny models: the record names the settings; the flags drop it or all."""
    Image.fromarray(_smooth(16, 16, 3)).save(tmp_path / "in.png", icc_profile=SRGB)
    models = ["--sd-model", tiny_models.sd_dir, "--noise-predictor", tiny_models.noise_predictor_path,
              "--device", "cpu", "--tile", "16", "--overlap", "0"]
    env = {"HF_HUB_OFFLINE": "1"}
    runs = {"prov": [], "none": ["--no-provenance"], "strip": ["--strip-metadata"]}
    for name, extra in runs.items():
        p = _run("upscale", tmp_path / "in.png", tmp_path / name, "--seed", "5", "--format", "jxl", "--lossless",
                 *models, *extra, env=env)
        assert p.returncode == 0, p.stdout + p.stderr
    record = read_provenance(tmp_path / "prov" / "in.jxl")
    assert record["seed"] == 5 and record["preset"] == "default" and record["tile"] == 16
    assert record["timesteps"] == [200] and record["invsr"] and record["models"]["sd_model"]["source"] == "local"
    assert "path" not in record["models"]["sd_model"] and record["passes"] == 1 and record["scale"] == 4
    assert len(record["models"]["noise_predictor"]["sha256"]) == 64  # the identity of the weights it was made with
    assert read_provenance(tmp_path / "none" / "in.jxl") is None
    assert _meta(tmp_path / "strip" / "in.jxl") == {"icc": "libjxl:sRGB", "make": None, "xmp": None}
    with Image.open(tmp_path / "prov" / "in.jxl") as im:
        assert im.size == (64, 64)


def test_read_xmp_of_an_unreadable_file_names_it(tmp_path):
    (tmp_path / "bad.avif").write_bytes(b"\x00\x00\x00\x1cftypavif" + b"\x00" * 40)
    with pytest.raises(ImageReadError, match="bad.avif"):
        read_provenance(tmp_path / "bad.avif")


@pytest.mark.slow
def test_camera_photos_upscale_to_tiff_end_to_end(tmp_path, tiny_models):
    """Issue 19, item 1, as it was met: a camera JPEG (Exif sub-IFD) with --format tiff, and an 8-bit TIFF with
    GPS with --format auto, both failed after the whole compute with libtiff's warnings on stderr."""
    (tmp_path / "in").mkdir()
    Image.fromarray(_smooth(16, 16, 3)).save(tmp_path / "in" / "cam.jpg", exif=_camera_exif(), icc_profile=SRGB)
    Image.fromarray(_smooth(16, 16, 3)).save(tmp_path / "in" / "gps.tif", exif=_camera_exif())
    models = ["--sd-model", tiny_models.sd_dir, "--noise-predictor", tiny_models.noise_predictor_path,
              "--device", "cpu", "--tile", "16", "--overlap", "0", "--json"]
    for src, fmt, out in (("cam.jpg", "tiff", "cam.tiff"), ("gps.tif", "auto", "gps.tif")):
        p = _run("upscale", tmp_path / "in" / src, tmp_path / "out", "--format", fmt, *models,
                 env={"HF_HUB_OFFLINE": "1"})
        assert p.returncode == 0, p.stdout + p.stderr
        assert "TIFF" not in p.stderr and "Error setting" not in p.stdout, p.stderr  # no libtiff warnings
        with Image.open(tmp_path / "out" / out) as im:
            assert im.size == (64, 64) and im.getexif().get(0x0110) == "Model X"
