"""Output size and write time per format for one 2048x1536 output (issue 12's closing note).

The image stands in for an x4 result: scikit-image's 512x512 astronaut photo enlarged x4 (bicubic) and cropped to
2048x1536, so it is smooth at the pixel level like a real upscale. Each case is written through
``invsr_cli.imaging.encode.write_image`` (encode + atomic write with fsync, the provenance record included), ``--repeat``
times; the table shows the fastest run (the least disturbed by other load) and the file size.

    PYTHONPATH=$PWD .venv/bin/python scripts/format_bench.py [--repeat 3] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from invsr_cli.imaging.decode import LoadedImage
from invsr_cli.imaging.encode import write_image
from invsr_cli.imaging.provenance import provenance_record

CASES = [  # label, format, quality, lossless, 16-bit source
    ("png", "png", None, False, False),
    ("png 16-bit", "png", None, False, True),
    ("tiff (deflate)", "tiff", None, False, False),
    ("tiff 16-bit", "tiff", None, False, True),
    ("jpg q95", "jpg", 95, False, False),
    ("jpg q85", "jpg", 85, False, False),
    ("webp q95", "webp", 95, False, False),
    ("webp lossless", "webp", None, True, False),
    ("avif q95", "avif", 95, False, False),
    ("avif q80", "avif", 80, False, False),
    ("jxl q95", "jxl", 95, False, False),
    ("jxl q85", "jxl", 85, False, False),
    ("jxl lossless", "jxl", None, True, False),
]


def test_image() -> np.ndarray:
    from skimage import data

    lr = data.astronaut().astype(np.float32) / 255
    hr = cv2.resize(lr, (2048, 2048), interpolation=cv2.INTER_CUBIC)[256:1792]
    return np.clip(hr, 0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = ap.parse_args()
    rgb = test_image()
    h, w = rgb.shape[:2]
    record = provenance_record({"preset": "default", "timesteps": [200], "steps": 1, "seed": 0})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, fmt, quality, lossless, deep in CASES:
            source = LoadedImage(path=Path("bench.png"), rgb=rgb, alpha=None, grayscale=False,
                                 bit_depth=16 if deep else 8, format="png", icc=None, exif=None, width=w, height=h)
            out = Path(tmp) / f"o.{fmt}"
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                size = write_image(out, rgb, source=source, format=fmt, quality=quality, lossless=lossless,
                                   provenance=record)
                times.append(time.perf_counter() - t0)
            rows.append((label, size, min(times)))
    raw = w * h * 3
    if args.markdown:
        print(f"| output ({w}x{h} RGB) | size | bits/pixel | write time |")
        print("|---|---:|---:|---:|")
        for label, size, t in rows:
            print(f"| {label} | {size / 1e6:.2f} MB | {size * 8 / (w * h):.2f} | {t:.2f} s |")
    else:
        for label, size, t in rows:
            print(f"{label:<16} {size / 1e6:8.2f} MB  {size / raw * 100:5.1f}% of raw  {t:6.2f} s")
    print(f"\n{os.cpu_count()} CPU cores; fastest of {args.repeat} runs; raw 8-bit RGB = {raw / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
