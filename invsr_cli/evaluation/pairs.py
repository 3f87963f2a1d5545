"""HR/LR pairs: made from sharp photos with the degradations (``invsr degrade``, ``invsr eval HR...``) or read from
a ``--pairs`` folder (``hr/`` and ``lr/``, names matching, sizes exactly x4).

Every failure is per file: a :class:`Failure` naming the file and the reason, the rest goes on.

* :func:`make_pair` -- read one HR photo (``imaging.decode.read_image``: EXIF orientation, 16-bit, alpha), turn it
  into the 8-bit RGB ground truth (16-bit rounded, alpha over white), resize its short side to ``size`` (area) and
  crop the centre (a short side below ``size`` is refused), degrade it with its own generator
  (``quality.degrade.make_rng(seed, rel)``).
* :func:`run_degrade` -- ``invsr degrade``: every pair written atomically as PNG under ``OUT/hr/`` and ``OUT/lr/``
  (the relative paths of ``upscale``'s discovery, ``.png``), and one JSON line per pair appended to
  ``OUT/degrade.jsonl``: the files, the source, profile, size, seed and every sampled parameter.
* :func:`read_pairs` -- a ``--pairs`` folder: ``hr/X.*`` matched to ``lr/X.*`` by relative path without the
  extension.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from invsr_cli.base.errors import InvSRError
from invsr_cli.base.paths import display_path
from invsr_cli.quality.degrade import degrade, make_rng, prepare_hr, to_rgb8

__all__ = ["MANIFEST", "Failure", "Pair", "encode_png", "make_pair", "read_pairs", "run_degrade", "source_pairs"]

MANIFEST = "degrade.jsonl"


@dataclass(frozen=True)
class Pair:
    """One ground truth and its x4 LR, uint8 RGB; ``params`` the sampled degradation (None for a read pair)."""

    rel: PurePosixPath
    hr: np.ndarray
    lr: np.ndarray
    source: str
    params: dict[str, Any] | None = None


@dataclass(frozen=True)
class Failure:
    """One input that could not be used: ``reason`` is one line naming the file."""

    input: str
    reason: str


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _read_rgb8(path: Path) -> np.ndarray:
    from invsr_cli.imaging.decode import read_image

    loaded = read_image(path)
    return to_rgb8(loaded.rgb, loaded.alpha)


def make_pair(path: Path, rel: PurePosixPath, *, profile: str, size: int, seed: int) -> Pair:
    """The pair of one HR photo (see the module docstring); raises InvSRError naming the file."""
    hr8 = _read_rgb8(path)
    try:
        hr = prepare_hr(hr8, size)
        lr, params = degrade(hr, profile, make_rng(seed, str(rel)))
    except InvSRError as e:
        raise type(e)(f"{display_path(path)}: {e}") from None
    return Pair(rel, hr, lr, str(path), params)


def source_pairs(inputs: Sequence[str], *, profile: str, size: int, seed: int, recursive: bool = False,
                 stdin_paths: Sequence[str] | None = None,
                 exclude: str | os.PathLike[str] | None = None) -> Iterator[Pair | Failure]:
    """Pairs made from HR inputs (files, folders, globs, ``-``), one at a time, failures in line."""
    from invsr_cli.run.discover import expand_inputs

    found = expand_inputs(inputs, recursive=recursive, stdin_paths=stdin_paths, exclude=exclude)
    for spec, reason in found.errors:
        yield Failure(spec, reason)
    for f in found.inputs:
        try:
            yield make_pair(f.path, f.rel, profile=profile, size=size, seed=seed)
        except InvSRError as e:
            yield Failure(str(f.path), _first_line(e))


def _index(folder: Path) -> dict[PurePosixPath, Path]:
    from invsr_cli.run.discover import expand_inputs

    found = expand_inputs([str(folder)], recursive=True)
    return {f.rel.with_suffix(""): f.path for f in found.inputs}


def read_pairs(folder: str | os.PathLike[str]) -> Iterator[Pair | Failure]:
    """The pairs of a folder holding ``hr/`` and ``lr/``; unmatched names and sizes that are not exactly x4 are
    failures naming the file."""
    from invsr_cli.base.errors import ConfigError

    root = Path(folder)
    hr_dir, lr_dir = root / "hr", root / "lr"
    for d in (hr_dir, lr_dir):
        if not d.is_dir():
            raise ConfigError(f"--pairs {display_path(root)}: no {d.name}/ folder in it")
    hrs, lrs = _index(hr_dir), _index(lr_dir)
    for key in sorted(set(lrs) - set(hrs)):
        yield Failure(str(lrs[key]), f"{display_path(lrs[key])}: no matching file in {display_path(hr_dir)}")
    for key in sorted(hrs):
        hr_path = hrs[key]
        if key not in lrs:
            yield Failure(str(hr_path), f"{display_path(hr_path)}: no matching file in {display_path(lr_dir)}")
            continue
        try:
            hr, lr = _read_rgb8(hr_path), _read_rgb8(lrs[key])
        except InvSRError as e:
            yield Failure(str(hr_path), _first_line(e))
            continue
        if hr.shape[:2] != (lr.shape[0] * 4, lr.shape[1] * 4):
            yield Failure(str(hr_path), f"{display_path(hr_path)}: {hr.shape[1]}x{hr.shape[0]} is not exactly 4x "
                                        f"its LR {display_path(lrs[key])} ({lr.shape[1]}x{lr.shape[0]})")
            continue
        yield Pair(key.with_suffix(".png"), hr, lr, str(hr_path))


def encode_png(rgb: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 RGB image (OpenCV; the same bytes for the same pixels)."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise InvSRError("PNG encoding failed")
    return buf.tobytes()


def run_degrade(inputs: Sequence[str], out_dir: str | os.PathLike[str], *, profile: str, size: int, seed: int,
                recursive: bool = False, stdin_paths: Sequence[str] | None = None,
                on_record: Callable[[dict[str, Any]], None] = lambda r: None) -> list[dict[str, Any]]:
    """``invsr degrade``: write every pair and its manifest line; returns one record per input (``error`` set
    for a failure), each also handed to ``on_record`` as it is made."""
    from invsr_cli.base.atomic import atomic_write_bytes

    out = Path(out_dir)
    records: list[dict[str, Any]] = []
    manifest = out / MANIFEST
    written: dict[PurePosixPath, str] = {}
    for item in source_pairs(inputs, profile=profile, size=size, seed=seed, recursive=recursive,
                             stdin_paths=stdin_paths, exclude=out):
        if isinstance(item, Failure):
            record: dict[str, Any] = {"input": item.input, "error": item.reason}
        elif (rel := item.rel.with_suffix(".png")) in written:
            record = {"input": item.source, "error": f"{display_path(item.source)}: its pair hr/{rel} is already "
                                                     f"made from {display_path(written[rel])}; refused"}
        else:
            written[rel] = item.source
            hr_path, lr_path = out / "hr" / rel, out / "lr" / rel
            try:
                for path, pixels in ((hr_path, item.hr), (lr_path, item.lr)):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_bytes(path, encode_png(pixels))
            except (InvSRError, OSError) as e:
                record = {"input": item.source, "error": f"{display_path(item.source)}: {e}"}
            else:
                record = {"input": item.source, "hr": f"hr/{rel}", "lr": f"lr/{rel}", "profile": profile,
                          "size": size, "seed": seed, "params": item.params}
                manifest.parent.mkdir(parents=True, exist_ok=True)
                with open(manifest, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        records.append(record)
        on_record(record)
    return records
