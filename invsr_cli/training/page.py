"""``RUN_DIR/report.html``: a training run at a glance, a Jinja2 page beside the upscale and eval reports
(``invsr_cli/templates/train_report.html.j2``): the settings, the loss and learning-rate curves, the validation
scores (table and curves) and the before/after strips, newest first. Rebuilt from ``config.yaml`` and ``log.jsonl``
after each validation and at the end of a run, written atomically; the strips are linked (``val/strip_N.png``),
not copied."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from invsr_cli.base.atomic import atomic_write_bytes

__all__ = ["PAGE", "chart", "write_page"]

PAGE = "report.html"
CHART_W, CHART_H, PAD, LEFT = 420, 160, 24, 60  # LEFT: room for the y labels
MAX_POINTS = 600
_LOSSES = (("total", "loss (weighted sum)"), ("l2", "L2 on latents"), ("lpips", "latent LPIPS"),
           ("gan", "GAN (generator)"), ("d_loss", "discriminator hinge"), ("lr", "learning rate"))
_SCORES = (("psnr", "PSNR (dB), higher is better"), ("ssim", "SSIM, higher is better"),
           ("lpips", "LPIPS, lower is better"))


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most :data:`MAX_POINTS`: consecutive points averaged in equal buckets."""
    if len(points) <= MAX_POINTS:
        return points
    k = math.ceil(len(points) / MAX_POINTS)
    out = []
    for i in range(0, len(points), k):
        chunk = points[i : i + k]
        out.append((sum(p[0] for p in chunk) / len(chunk), sum(p[1] for p in chunk) / len(chunk)))
    return out


def chart(points: Sequence[tuple[float, float]], title: str) -> dict[str, Any] | None:
    """An SVG line chart's data: ``polyline`` (the points string in pixel space), axis ends and their labels;
    None without a finite point."""
    pts = _thin([(float(x), float(y)) for x, y in points if y is not None and math.isfinite(float(y))])
    if not pts:
        return None
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) or 1) * 0.05, y1 + (abs(y1) or 1) * 0.05
    w, h = CHART_W - LEFT - PAD, CHART_H - 2 * PAD

    def px(p: tuple[float, float]) -> str:
        return f"{LEFT + (p[0] - x0) / (x1 - x0) * w:.1f},{PAD + (1 - (p[1] - y0) / (y1 - y0)) * h:.1f}"

    return {"title": title, "polyline": " ".join(px(p) for p in pts), "points": len(pts), "w": CHART_W,
            "h": CHART_H, "pad": PAD, "left": LEFT, "x0": _fmt(x0), "x1": _fmt(x1), "y0": _fmt(y0), "y1": _fmt(y1),
            "dots": len(pts) <= 40, "coords": [px(p).split(",") for p in pts] if len(pts) <= 40 else []}


def _fmt(v: float) -> str:
    if v == int(v) and abs(v) < 1e7:
        return str(int(v))
    return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.4f}".rstrip("0").rstrip(".")


def _num(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{float(v):.{digits}f}"


def write_page(run_dir: str | Path, records: Sequence[dict[str, Any]], config: dict[str, Any]) -> Path:
    """Render ``run_dir/report.html`` from the log's ``records`` and the run's ``config``; returns its path."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    run_dir = Path(run_dir)
    train = [r for r in records if r.get("kind", "train") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    charts = [c for key, title in _LOSSES  # a term switched off (all zeros: --no-gan, --no-lpips) has no chart
              if any(r.get(key) for r in train)
              and (c := chart([(r["iteration"], r.get(key)) for r in train if key in r], title)) is not None]
    val_charts = [c for key, title in _SCORES
                  if (c := chart([(r["iteration"], r.get(key)) for r in val], title)) is not None]
    last = train[-1] if train else None
    settings = [(k, v) for k, v in config.items() if k not in ("inputs", "extra", "resume")]
    env = Environment(loader=PackageLoader("invsr_cli", "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    html = env.get_template("train_report.html.j2").render(
        title=f"invsr train: {run_dir.name}", settings=settings, inputs=[str(i) for i in config.get("inputs", [])],
        iteration=last["iteration"] if last else 0, total=config.get("iterations"),
        it_per_s=(sum(r.get("it_per_s", 0.0) for r in train[-20:]) / len(train[-20:])) if train else None,
        charts=charts, val_charts=val_charts, val=list(reversed(val)),
        strips=[r for r in reversed(val) if r.get("strip") and (run_dir / r["strip"]).is_file()])
    path = run_dir / PAGE
    atomic_write_bytes(path, html.encode("utf-8"))
    return path
