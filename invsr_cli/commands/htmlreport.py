"""The visual report: a static, self-contained HTML page built from the run manifest.

``write_report(output_dir, html_path)`` reads every ``.invsr-manifest*.jsonl`` in ``output_dir`` (the manifest
and any shards; the latest record per output wins) and writes ``html_path`` plus ``<stem>_files/`` beside it:

* a summary: done and failed (with each reason), the run's skipped count and wall time when the caller passes the
  run's :class:`~invsr_cli.work.report.Summary`, the compute time, the settings (one table per distinct set) and models;
* per image: the input beside the output at the same display size with a before/after slider, a zoomed crop of the
  region with the most detail (input pixels enlarged without smoothing, and the output), the preset and, for
  ``auto``, the measured noise/blur/blockiness and the rule that chose it, and the time taken. An animation is
  shown by its first frame (composited, as a viewer shows it), with its frame count and timing;
* per video: a poster frame of the input and of the output at the same time (the output's frame near 10% of its
  length and the input frame it was made from), with the same slider and crops, the frame count, duration, frame
  rate and segments, and a table of its segments (frames, seconds, tiles, status and reason) from the manifest's
  segment lines, which are not entries of their own. A failed video is listed with the failures, with its segment
  table. Without PyAV (the ``video`` extra) the page is still written, with a note instead of the poster frames.

The page needs no server and no network (it works from ``file://``): CSS and a few lines of JavaScript are inline;
thumbnails and crops are WebP files in ``<stem>_files/``, never inlined, so a page stays small (about 1.5 kB of
HTML per image) and they are reused by the next report when the output has not changed. Past ``page_size`` images
the gallery continues on ``<stem>-2.html``, ``<stem>-3.html``, ... The page is rendered by Jinja2 with
autoescaping on: every file name, reason and setting is escaped; links to files are percent-encoded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from invsr_cli.base.atomic import atomic_write_bytes
from invsr_cli.work.report import Outcome

__all__ = ["PAGE_SIZE", "ReportResult", "manifest_files", "read_records", "write_report", "page_path"]

PAGE_SIZE = 200  # images per page
THUMB = 480  # the long side of the before/after display size, px
CROP = 32  # side of the detail window, in input pixels
ZOOM = 256  # display size of each zoomed crop, px
_QUALITY = 88  # WebP quality of thumbnails and crops


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote: the pages (the first is ``html_path``), the image folder, the counts."""

    pages: list[Path]
    files_dir: Path
    images: int
    failed: int
    html_bytes: int


def manifest_files(output_dir: Path) -> list[Path]:
    """The manifest and its shards in ``output_dir``, sorted by name."""
    from invsr_cli.run.manifest import MANIFEST_GLOB

    return sorted(Path(output_dir).glob(MANIFEST_GLOB))


def read_records(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The latest record per output across ``paths`` (a later ``time`` wins between files)."""
    from invsr_cli.run.manifest import Manifest

    latest: dict[str, dict[str, Any]] = {}
    for path in paths:
        for rec in Manifest(Path(path)).records():
            key = rec["output"] or f"\0input:{rec.get('input', '')}"  # as Manifest keys them
            if key not in latest or str(rec.get("time", "")) >= str(latest[key].get("time", "")):
                latest[key] = rec
    return list(latest.values())


def page_path(html_path: Path, page: int) -> Path:
    """Page 1 is ``html_path``; page k is ``<stem>-k<suffix>`` beside it."""
    html_path = Path(html_path)
    return html_path if page == 1 else html_path.with_name(f"{html_path.stem}-{page}{html_path.suffix}")


def write_report(
    output_dir: str | os.PathLike[str],
    html_path: str | os.PathLike[str],
    manifest_paths: Sequence[str | os.PathLike[str]] | None = None,
    *,
    summary: Any = None,
    page_size: int = PAGE_SIZE,
) -> ReportResult:
    """Write the report of ``output_dir`` to ``html_path`` (see the module docstring) and return what was written.

    ``manifest_paths`` defaults to every ``.invsr-manifest*.jsonl`` in ``output_dir``; ``summary`` (the run's
    ``Summary``) adds the run's own counts and wall time. Raises :class:`~invsr_cli.base.errors.ConfigError` when there
    is no manifest or ``page_size`` < 1, and :class:`~invsr_cli.base.errors.OutputError` when the page cannot be written.
    """
    from invsr_cli.base.errors import ConfigError, OutputError

    output_dir = Path(output_dir)
    html_path = Path(html_path)
    if page_size < 1:
        raise ConfigError(f"`page_size` must be at least 1, got {page_size}")
    paths = [Path(p) for p in manifest_paths] if manifest_paths else manifest_files(output_dir)
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise ConfigError(f"no run manifest (.invsr-manifest*.jsonl) in {output_dir}: run `invsr upscale ... "
                          f"{output_dir}` first, or give the manifest with --manifest")
    records = read_records(paths)
    segments = _segment_lines(records)
    entries = [r for r in records if not _is_segment(r)]
    files_dir = html_path.with_name(f"{html_path.stem}_files")
    try:
        files_dir.mkdir(parents=True, exist_ok=True)
        done = sorted((r for r in entries if r.get("status") == "done"), key=lambda r: str(r.get("output")))
        failed = sorted(({**r, "segment_rows": _segment_rows(r, segments)} for r in entries
                         if r.get("status") == "failed"), key=lambda r: str(r.get("input")))
        items = [_item(r, output_dir, html_path.parent, files_dir, _segment_rows(r, segments)) for r in done]
        _prune(files_dir, {name for it in items for name in it["files"]})
        pages = max(1, -(-len(items) // page_size))
        context = _summary_context(records, done, failed, paths, summary, output_dir)
        env = _environment()
        template = env.get_template("report.html.j2")
        written = []
        total = 0
        for page in range(1, pages + 1):
            path = page_path(html_path, page)
            nav = [{"n": k, "href": quote(page_path(html_path, k).name), "current": k == page}
                   for k in range(1, pages + 1)] if pages > 1 else []
            html = template.render(
                **context, items=items[(page - 1) * page_size: page * page_size], page=page, pages=pages, nav=nav,
                first_index=(page - 1) * page_size, failures=failed[:500] if page == 1 else [],
                more_failures=max(0, len(failed) - 500) if page == 1 else 0,
            )
            data = html.encode("utf-8")
            atomic_write_bytes(path, data)
            written.append(path)
            total += len(data)
        for stale in range(pages + 1, 10_000):  # pages left by a longer earlier report
            p = page_path(html_path, stale)
            if not p.exists():
                break
            p.unlink()
    except OSError as e:
        raise OutputError(f"cannot write the report {html_path}: {e}") from e
    return ReportResult(pages=written, files_dir=files_dir, images=len(items), failed=len(failed), html_bytes=total)


# -- the page ---------------------------------------------------------------------------------------------------


def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("invsr_cli", "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["shown"] = _shown
    env.filters["value"] = _value
    return env


def _value(v: Any) -> str:
    """A setting or model field for a person, not a Python repr: not set as a dash, yes/no, lists joined, a
    mapping (a model's identity) as ``key value`` pairs."""
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v) or "–"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_value(x)}" for k, x in v.items()) or "–"
    return _shown(v)


def _num(v: Any, digits: int = 2) -> str:
    return "n/a" if v is None else f"{float(v):.{digits}f}"


def _shown(v: Any) -> str:
    """A path or any text as valid, printable UTF-8 (undecodable bytes as \\xNN); escaping is Jinja2's."""
    from invsr_cli.base.paths import display_path

    return display_path(v) if isinstance(v, (str, os.PathLike)) else str(v)


def _href(target: Path, base: Path) -> str:
    """A relative, percent-encoded link from the page's folder to ``target`` (any bytes in the name)."""
    rel = os.path.relpath(os.path.abspath(target), os.path.abspath(base))
    return quote(os.fsencode(rel).replace(os.sep.encode(), b"/"))


def _summary_context(records: list[dict[str, Any]], done: list[dict[str, Any]], failed: list[dict[str, Any]],
                     paths: list[Path], summary: Any, output_dir: Path) -> dict[str, Any]:
    settings_sets: dict[str, dict[str, Any]] = {}
    for r in done or [r for r in records if not _is_segment(r)]:
        s = r.get("settings")
        if isinstance(s, dict):
            key = json.dumps(s, sort_keys=True, default=str)
            entry = settings_sets.setdefault(key, {"settings": s, "presets": set(), "count": 0})
            entry["presets"].add(str(r.get("preset") or s.get("preset") or ""))
            entry["count"] += 1
    models: dict[str, dict[str, Any]] = {}
    for r in done:
        m = r.get("models")
        if isinstance(m, dict):
            models.setdefault(json.dumps(m, sort_keys=True, default=str), m)
    times = sorted(str(r["time"]) for r in records if r.get("time"))
    run = None
    if summary is not None:
        run = {"processed": summary.processed, "skipped": summary.skipped, "failed": summary.failed,
               "wall": summary.wall_seconds, "interrupted": summary.interrupted, "stopped": summary.stopped}
    return {
        "title": f"invsr report: {_shown(output_dir)}",
        "output_dir": _shown(output_dir),
        "manifests": [_shown(p) for p in paths],
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "n_done": len(done),
        "n_failed": len(failed),
        "compute_seconds": sum(float(r.get("seconds") or 0) for r in done),
        "first_time": times[0] if times else "",
        "last_time": times[-1] if times else "",
        "run": run,
        "settings_sets": [{"settings": v["settings"], "presets": ", ".join(sorted(p for p in v["presets"] if p)),
                           "count": v["count"]} for v in settings_sets.values()],
        "models": list(models.values()),
        "has_video": any(r.get("segments") for r in done),
    }


# -- a video's segments -----------------------------------------------------------------------------------------


def _is_segment(rec: dict[str, Any]) -> bool:
    """A video segment's line (it names its video): a unit of work, not an entry of the report."""
    return "video" in rec


def _segment_lines(records: list[dict[str, Any]]) -> dict[tuple[str, Any], dict[Any, dict[str, Any]]]:
    """The segment lines by (video output, segment count), the latest line per segment index."""
    by_video: dict[tuple[str, Any], dict[Any, dict[str, Any]]] = {}
    for r in records:
        if _is_segment(r):
            lines = by_video.setdefault((str(r["video"]), r.get("segments")), {})
            k = r.get("segment")
            if k not in lines or str(r.get("time", "")) >= str(lines[k].get("time", "")):
                lines[k] = r
    return by_video


def _segment_rows(rec: dict[str, Any], segments: dict[tuple[str, Any], dict[Any, dict[str, Any]]]
                  ) -> list[dict[str, Any]] | None:
    """A video's segment table (None for an image): one row per segment of the plan its line names."""
    if not rec.get("segments"):
        return None
    lines = segments.get((str(rec.get("output")), rec.get("segments")), {})
    return [{"n": (r.get("segment") or 0) + 1, "frames": r.get("frames"), "seconds": r.get("seconds"),
             "tiles": r.get("tiles"), "status": r.get("status", ""), "reason": r.get("reason") or ""}
            for r in sorted(lines.values(), key=lambda r: r.get("segment") or 0)]


# -- per image --------------------------------------------------------------------------------------------------


def _find_output(rec: dict[str, Any], output_dir: Path) -> Path | None:
    """The output file: as recorded (relative paths are relative to where the run started), else the longest
    tail of the recorded path that exists under ``output_dir`` (a report built from another folder)."""
    p = Path(rec["output"])
    if p.is_file():
        return p
    parts = p.parts
    for k in range(len(parts)):
        q = output_dir.joinpath(*parts[k:])
        if q.is_file():
            return q
    return None


def _outcome(rec: dict[str, Any]) -> Outcome:
    """A manifest record read as the :class:`Outcome` it records (the one record format); settings a hand-edited
    or older line holds that do not read back are left out rather than failing the page."""
    try:
        return Outcome.from_record(rec)
    except (TypeError, ValueError):
        return Outcome.from_record({**rec, "settings": None})


def _item(rec: dict[str, Any], output_dir: Path, page_dir: Path, files_dir: Path,
          segment_rows: list[dict[str, Any]] | None) -> dict[str, Any]:
    o = _outcome(rec)
    inp = Path(str(o.input))
    out = _find_output(rec, output_dir)
    deg = o.degradation if isinstance(o.degradation, dict) else None
    item: dict[str, Any] = {
        "input": _shown(o.input),
        "output": _shown(o.output),
        "preset": str(o.preset or (o.settings.preset if o.settings is not None else "")),
        "auto": deg is not None,
        "degradation": deg or {},
        "auto_reason": o.rule or rec.get("auto_reason") or None,  # `auto_reason`: what early manifests wrote
        "seconds": o.seconds,
        "tiles": o.tiles,
        "timesteps": list(o.timesteps),
        "time": rec.get("time", ""),
        "width": o.width,
        "height": o.height,
        "files": [],
        "images": None,
        "problem": None,
        "input_href": _href(inp, page_dir) if inp.is_file() else None,
        "output_href": _href(out, page_dir) if out is not None else None,
        "video": None if segment_rows is None else {"frames": o.frames, "segments": o.segments,
                                                    "rows": segment_rows},
    }
    if out is None:
        item["problem"] = "the output file is no longer there"
        return item
    if not inp.is_file():
        item["problem"] = "the input file is no longer there (or the report is built from another folder than the run)"
        return item
    try:
        item["images"] = _thumbnails(inp, out, files_dir, video=segment_rows is not None)
    except Exception as e:  # one unreadable file (or no PyAV for a video) must not stop a report of thousands
        what = "thumbnails" if segment_rows is None else "poster frames"
        item["problem"] = f"cannot make {what}: {type(e).__name__}: {e}"
        return item
    item["files"] = [item["images"][k] for k in ("before", "after", "crop_in", "crop_out")]
    base = quote(files_dir.name)
    item["src"] = {k: f"{base}/{item['images'][k]}" for k in ("before", "after", "crop_in", "crop_out")}
    return item


def _key(inp: Path, out: Path) -> str:
    h = hashlib.sha256()
    for p in (inp, out):
        st = p.stat()
        h.update(os.fsencode(os.path.abspath(p)) + b"\0" + f"{st.st_size}:{st.st_mtime_ns}".encode() + b"\0")
    h.update(f"v1:{THUMB}:{CROP}:{ZOOM}:{_QUALITY}".encode())  # bump v1 when the pictures change
    return h.hexdigest()[:20]


def _thumbnails(inp: Path, out: Path, files_dir: Path, *, video: bool) -> dict[str, Any]:
    """Writes (or reuses) four WebP files; returns their names, the display size and the crop box (and, for an
    animation or a video, what :func:`_first_frame` or :func:`_poster_frames` tells of it)."""
    key = _key(inp, out)
    names = {k: f"{key}-{k}.webp" for k in ("before", "after", "crop_in", "crop_out")}
    meta_path = files_dir / f"{key}.json"
    if meta_path.is_file() and all((files_dir / n).is_file() for n in names.values()):
        try:
            return {**json.loads(meta_path.read_text(encoding="utf-8")), **names}
        except ValueError:
            pass
    import numpy as np

    extra: dict[str, Any] = {}
    if video:
        a, b, extra["video"] = _poster_frames(inp, out)
        detail = a.astype(np.float32) / 255.0
    else:
        src, src_anim = _first_frame(inp)
        res, res_anim = _first_frame(out)
        a, b, detail = _to_uint8(src), _to_uint8(res), src.rgb
        if res_anim or src_anim:  # an animation: its first frame is what is shown
            extra["animation"] = res_anim or src_anim
    meta = {**_draw(a, b, detail, files_dir, names), **extra}
    atomic_write_bytes(meta_path, json.dumps(meta).encode())
    return {**meta, **names}


def _draw(a: Any, b: Any, detail: Any, files_dir: Path, names: dict[str, str]) -> dict[str, Any]:
    """The before/after pair at one display size and the zoomed crops of the region of most detail of ``detail``
    (the input as float RGB), from the input ``a`` and the output ``b`` (RGB uint8); returns the sizes and the box."""
    from PIL import Image

    ow, oh = b.shape[1], b.shape[0]
    iw, ih = a.shape[1], a.shape[0]
    f = THUMB / max(ow, oh)  # both at one display size: the output's shape, THUMB px on its long side
    dw, dh = max(1, round(ow * f)), max(1, round(oh * f))
    _save_webp(Image.fromarray(a).resize((dw, dh), Image.Resampling.BICUBIC), files_dir / names["before"])
    _save_webp(Image.fromarray(b).resize((dw, dh), Image.Resampling.LANCZOS), files_dir / names["after"])

    x0, y0, c = _most_detail(detail)
    sx, sy = ow / iw, oh / ih
    box = (round(x0 * sx), round(y0 * sy), round((x0 + c) * sx), round((y0 + c) * sy))
    crop_out = Image.fromarray(b).crop(box)
    crop_in = Image.fromarray(a[y0:y0 + c, x0:x0 + c]).resize(crop_out.size, Image.Resampling.NEAREST)
    zw = ZOOM
    zh = max(1, round(ZOOM * crop_out.height / max(crop_out.width, 1)))
    resample = Image.Resampling.NEAREST if crop_out.width <= zw else Image.Resampling.LANCZOS
    _save_webp(crop_in.resize((zw, zh), Image.Resampling.NEAREST), files_dir / names["crop_in"])
    _save_webp(crop_out.resize((zw, zh), resample), files_dir / names["crop_out"])
    return {"dw": dw, "dh": dh, "zw": zw, "zh": zh, "crop": [x0, y0, c], "zoom": round(zw / max(c, 1), 1),
            "in_size": [iw, ih], "out_size": [ow, oh]}


def _poster_frames(inp: Path, out: Path) -> tuple[Any, Any, dict[str, Any]]:
    """A video's poster frames: the output's frame ``frames // 10`` (near 10% of its length) and the input's frame
    with the nearest timestamp (the output keeps the input's, so it is the frame it was made from, with --start
    too), each turned as a player shows it (its rotation); and the output's frame count, duration and rate."""
    import bisect

    from invsr_cli.imaging import video as V

    res, src = V.probe(out), V.probe(inp)
    k = res.frames // 10
    at = res.pts[k] * res.time_base / src.time_base  # in the input's time base
    j = bisect.bisect_left(src.pts, at)
    j = min((i for i in (j - 1, j) if 0 <= i < src.frames), key=lambda i: abs(src.pts[i] - at))
    facts = {"frames": res.frames, "seconds": round(res.duration, 3),
             "fps": round(float(res.frame_rate), 3) if res.frame_rate else None,
             "shown": k + 1, "at": round(res.seconds(res.pts[k]), 3)}
    return _video_frame(src, j), _video_frame(res, k), facts


def _video_frame(info: Any, i: int) -> Any:
    """Frame ``i`` of a probed video (decoded from the keyframe before it), RGB uint8, turned by its rotation."""
    import numpy as np

    from invsr_cli.imaging import video as V

    rgb = V.frame_at(info, i)
    return np.ascontiguousarray(np.rot90(rgb, round(info.rotation / 90))) if info.rotation else rgb


def _first_frame(path: Path) -> tuple[Any, dict[str, Any] | None]:
    """The picture to show for ``path``: a still as read, or an animation's first frame (composited) with its
    frame count and timing (``frames``, ``seconds`` in all, ``min_ms``/``max_ms`` per frame)."""
    from PIL import Image

    from invsr_cli.imaging.animation import read_animation
    from invsr_cli.imaging.decode import probe_image, read_image
    from invsr_cli.work.inputs import is_animation

    if not is_animation(probe_image(path)):
        return read_image(path, max_pixels=None), None
    durations = []
    with Image.open(path) as im:
        for i in range(im.n_frames):
            im.seek(i)  # a frame's duration is known once it is reached (WebP: decoded)
            durations.append(int(round(float(im.info.get("duration", 0) or 0))))
    timing = {"frames": len(durations), "seconds": round(sum(durations) / 1000, 3), "min_ms": min(durations),
              "max_ms": max(durations)}
    return read_animation(path, first_only=True), timing


def _save_webp(im: Any, path: Path) -> None:
    """A thumbnail or crop, written atomically like every file invsr writes."""
    buf = io.BytesIO()
    im.save(buf, format="WEBP", quality=_QUALITY)
    atomic_write_bytes(path, buf.getvalue())


def _to_uint8(img: Any) -> Any:
    """RGB uint8 for display; transparency shown over a grey checkerboard."""
    import numpy as np

    rgb = img.rgb
    if img.alpha is not None:
        h, w = img.alpha.shape
        yy, xx = np.mgrid[0:h, 0:w]
        cell = max(4, min(h, w) // 16)
        checker = np.where(((yy // cell) + (xx // cell)) % 2 == 0, 0.8, 0.6).astype(np.float32)[..., None]
        a = img.alpha[..., None]
        rgb = rgb * a + checker * (1 - a)
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def _most_detail(rgb: Any) -> tuple[int, int, int]:
    """The ``CROP``-pixel square (clipped to the image) with the largest summed absolute Laplacian of the
    luminance: where the upscaler had the most to do. Returns (x0, y0, side) in input pixels."""
    import numpy as np

    y = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    h, w = y.shape
    c = min(CROP, h, w)
    p = np.pad(y, 1, mode="edge")
    lap = np.abs(4 * p[1:-1, 1:-1] - p[:-2, 1:-1] - p[2:, 1:-1] - p[1:-1, :-2] - p[1:-1, 2:])
    ii = np.zeros((h + 1, w + 1), np.float64)
    ii[1:, 1:] = lap.cumsum(0).cumsum(1)
    sums = ii[c:, c:] - ii[:-c, c:] - ii[c:, :-c] + ii[:-c, :-c]  # (h-c+1, w-c+1) window sums
    y0, x0 = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(x0), int(y0), int(c)


def _prune(files_dir: Path, keep: set[str]) -> None:
    """Remove thumbnails of outputs that are gone or changed (only files this module names)."""
    keys = {n.split("-", 1)[0] for n in keep}
    for p in files_dir.iterdir():
        stem = p.name.split("-", 1)[0].split(".", 1)[0]
        if len(stem) == 20 and p.suffix in (".webp", ".json") and stem not in keys:
            p.unlink(missing_ok=True)


# -- the evaluation report (`invsr eval --report`) ------------------------------------------------------------------

EVAL_THUMB = 256  # display side of each image in the evaluation gallery, px
EVAL_CHART_W, EVAL_CHART_H = 420, 30  # one chart's width, and the height of one bar row, px


class EvalReport:
    """The page `invsr eval --report HTML` writes: the table, one inline-SVG bar chart per metric (configurations
    against their mean), and per image the HR, the LR and every configuration's output side by side, each with a
    zoomed crop of the HR's region of most detail. Images are WebP files in ``<stem>_files/`` written as the
    outputs arrive (:meth:`add`), so memory stays bounded; :meth:`finish` renders the page (atomically)."""

    def __init__(self, html_path: str | os.PathLike[str]) -> None:
        self.html_path = Path(html_path)
        self.files_dir = self.html_path.with_name(self.html_path.stem + "_files")
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.images: dict[str, dict[str, Any]] = {}

    def _save(self, rgb: Any, name: str, box: tuple[int, int, int, int], scale: float) -> dict[str, Any]:
        from PIL import Image

        im = Image.fromarray(rgb)
        x0, y0, x1, y1 = (round(v * scale) for v in box)
        resample = Image.Resampling.NEAREST if scale < 1 else Image.Resampling.LANCZOS
        f = EVAL_THUMB / max(im.size)
        size = (max(1, round(im.width * f)), max(1, round(im.height * f)))
        _save_webp(im.resize(size, resample if scale < 1 else Image.Resampling.BICUBIC),
                   self.files_dir / f"{name}.webp")
        _save_webp(im.crop((x0, y0, x1, y1)).resize((ZOOM // 2, ZOOM // 2), Image.Resampling.NEAREST),
                   self.files_dir / f"{name}-crop.webp")
        return {"src": quote(f"{self.files_dir.name}/{name}.webp"),
                "crop": quote(f"{self.files_dir.name}/{name}-crop.webp"), "w": size[0], "h": size[1]}

    def add(self, image: str, hr: Any, lr: Any, label: str, out: Any, scores: dict[str, Any]) -> None:
        """One configuration's output of one image (uint8 RGB arrays); the HR and LR are saved on first sight."""
        entry = self.images.get(image)
        if entry is None:
            import numpy as np

            key = hashlib.sha256(image.encode()).hexdigest()[:16]
            x0, y0, c = _most_detail(hr.astype(np.float32) / 255.0)
            box = (x0, y0, x0 + c, y0 + c)
            entry = self.images[image] = {"name": image, "key": key, "box": box, "outputs": [],
                                          "hr": self._save(hr, f"{key}-hr", box, 1.0),
                                          "lr": self._save(lr, f"{key}-lr", box, lr.shape[1] / hr.shape[1])}
        n = len(entry["outputs"])
        entry["outputs"].append({"label": label, **scores,
                                 **self._save(out, f"{entry['key']}-o{n}", entry["box"], 1.0)})

    def finish(self, summary: list[dict[str, Any]], notes: Sequence[str]) -> Path:
        """Render the page from the table (``EvalResult.summary()``) and its notes; returns its path."""
        charts = []
        for metric, unit, higher in (("psnr", "dB", True), ("ssim", "", True), ("lpips", "", False)):
            vals = [r[metric] for r in summary if isinstance(r.get(metric), (int, float))
                    and r[metric] == r[metric] and r[metric] not in (float("inf"), float("-inf"))]
            if not vals:
                continue
            top = max(vals) or 1.0
            bars = [{"label": r["config"], "value": r[metric],
                     "w": 0 if not isinstance(r.get(metric), (int, float)) else
                     round((EVAL_CHART_W - 170) * min(1.0, max(0.0, r[metric] / top)), 1),
                     "best": metric in r["best"]} for r in summary]
            charts.append({"metric": metric, "unit": unit, "higher": higher, "bars": bars,
                           "height": EVAL_CHART_H * len(bars) + 10})
        html = _environment().get_template("eval_report.html.j2").render(
            title="invsr eval", generated=time.strftime("%Y-%m-%d %H:%M:%S"), summary=summary, notes=list(notes),
            charts=charts, chart_w=EVAL_CHART_W, bar_h=EVAL_CHART_H, images=list(self.images.values()))
        atomic_write_bytes(self.html_path, html.encode("utf-8"))
        return self.html_path
