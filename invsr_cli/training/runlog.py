"""``RUN_DIR/log.jsonl``: one JSON object per line, a training iteration (``kind`` ``train``: losses, learning rate,
seconds, iterations per second, peak RSS) or a validation (``kind`` ``val``: PSNR, SSIM, LPIPS, the strip).

A killed run can leave a half-written last line and lines for iterations after its last checkpoint; a resumed run
repeats those iterations, so :func:`rewind_log` first keeps only the lines up to the checkpoint it resumes from
(rewritten atomically), and :func:`read_log` skips a line that is not JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from invsr_cli.base.atomic import atomic_write_bytes

__all__ = ["read_log", "rewind_log"]


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every record of ``path`` (none when it does not exist), a line that does not parse left out."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def rewind_log(path: Path, iteration: int) -> int:
    """Keep the records of iterations up to ``iteration`` (the checkpoint resumed from); returns how many were
    dropped. Nothing is rewritten when nothing is to drop."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and int(rec.get("iteration", 0)) <= iteration:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode("utf-8"))
    return dropped
