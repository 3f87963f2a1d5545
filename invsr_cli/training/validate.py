"""Validation during ``invsr train``: the EMA predictor upscales a fixed set of validation pairs, scored with the
evaluation's metrics (PSNR-Y, SSIM-Y: :mod:`invsr_cli.quality.metrics`; LPIPS-VGG: :mod:`invsr_cli.quality.lpips`),
and a before/after strip of the first few is written as a PNG.

The validation images are ``--val`` (files or folders of HR images), or, without it, held out from the training
inputs (:func:`split_validation`: ``--val-holdout N`` images, by default one in twenty and at most four; none
below twenty images). Each is centre-cropped at its own resolution to ``size`` (the crop rounded down to a multiple
of 64, at least 64; reflect-padded when smaller, as training does) and degraded once with the ``testing`` profile
(the evaluation's synthetic test set) from a generator seeded by its file name, so every validation sees the same
pairs. The upscale is the engine's own (:class:`~invsr_cli.engine.sampler.InvSREngine` on the training's frozen
SD parts, the EMA predictor and the prompt embedding already computed), 1 step, seed 0: exactly what ``invsr
upscale --noise-predictor EMA --steps 1 --seed 0`` does to that LR. Validation draws from none of the training's
random streams, so a run validates or not with the same training result.

The strip ``RUN_DIR/val/strip_N.png`` has a row per image (the first :data:`STRIP_IMAGES`): the LR (nearest x4), the
starting predictor's output (``val/before/*.png``, kept from the validation at iteration 0), the EMA's output at
iteration N, the HR; panels of ``size`` pixels, :data:`GAP` white pixels apart. Written atomically.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invsr_cli.base.atomic import atomic_write_bytes

__all__ = ["GAP", "STRIP_IMAGES", "Validator", "split_validation", "validation_size"]

STRIP_IMAGES = 3
GAP = 4
_AUTO_EVERY = 20  # auto hold-out: one image in this many
_AUTO_MAX = 4


def validation_size(crop: int) -> int:
    """The side of a validation HR: ``crop`` rounded down to a multiple of 64 (the LR, a quarter, is then a
    multiple of 16 as the engine needs), at least 64."""
    return max(64, crop // 64 * 64)


def split_validation(paths: list[Path], holdout: int) -> tuple[list[Path], list[Path]]:
    """``(training, held out)``: the ``holdout`` images (``-1``: ``len // 20`` capped at 4) whose SHA-256 of the
    path as given is smallest, a choice that does not depend on the listing order and keeps most of its
    images when files are added. At least one image stays for training."""
    n = holdout if holdout >= 0 else min(_AUTO_MAX, len(paths) // _AUTO_EVERY)
    n = max(0, min(n, len(paths) - 1))
    if n == 0:
        return list(paths), []
    ranked = sorted(paths, key=lambda p: hashlib.sha256(str(p).encode("utf-8", "surrogateescape")).hexdigest())
    held = set(ranked[:n])
    return [p for p in paths if p not in held], [p for p in paths if p in held]


def _to8(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounded as the upscaler writes an 8-bit output."""
    arr = t.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float64)
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _read_png(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError):
        return None


class Validator:
    """The validation pairs, the engine on the EMA predictor, the LPIPS model; :meth:`run` scores an iteration."""

    def __init__(self, paths: list[Path], crop: int, trainer: Any, components: Any, run_dir: Path,
                 warn: Callable[[str], None] | None = None) -> None:
        from invsr_cli.engine.loading import Components
        from invsr_cli.engine.sampler import InvSREngine

        self.warn = warn or (lambda m: None)
        self.size = validation_size(crop)
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / "val"
        self.pairs = self._pairs(paths)
        comps = Components(vae=trainer.vae, unet=trainer.unet, text_encoder=None, tokenizer=components.tokenizer,
                           scheduler=components.scheduler, noise_predictor=trainer.ema)
        self.engine = InvSREngine(comps, prompt_embeds=trainer.prompt_embeds)
        self.lpips = self._lpips(trainer.device)

    def _pairs(self, paths: list[Path]) -> list[tuple[str, np.ndarray, np.ndarray]]:
        from invsr_cli.imaging.decode import read_image
        from invsr_cli.quality.degrade import degrade, make_rng, to_rgb8

        pairs = []
        s = self.size
        for path in paths:
            try:
                img = read_image(path)
                hr = to_rgb8(img.rgb, getattr(img, "alpha", None))
            except Exception as exc:  # noqa: BLE001 - a corrupt validation image is skipped, never a crash
                self.warn(f"{path}: validation image skipped ({exc})")
                continue
            h, w = hr.shape[:2]
            if h < s or w < s:
                hr = np.pad(hr, ((0, max(0, s - h)), (0, max(0, s - w)), (0, 0)), mode="reflect")
                h, w = hr.shape[:2]
            y, x = (h - s) // 2, (w - s) // 2
            hr = np.ascontiguousarray(hr[y : y + s, x : x + s])
            lr, _ = degrade(hr, "testing", make_rng(0, path.name))
            pairs.append((path.name, lr, hr))
        return pairs

    def _lpips(self, device: Any) -> Any:
        from invsr_cli.base.errors import WeightsUnavailableError
        from invsr_cli.quality.lpips import load_lpips

        try:
            return load_lpips(device)
        except WeightsUnavailableError as exc:
            self.warn(f"validation LPIPS not scored: {exc}")
            return None

    def _upscale(self, lr8: np.ndarray) -> np.ndarray:
        lr = torch.from_numpy(lr8.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        return _to8(self.engine.upscale(lr, steps=1, seed=0)[0])

    def _lpips_score(self, out8: np.ndarray, hr8: np.ndarray) -> float | None:
        if self.lpips is None:
            return None
        dev = next(self.lpips.parameters()).device

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)[None].to(dev)

        with torch.no_grad():
            return float(self.lpips(t(out8), t(hr8))[0])

    def run(self, iteration: int) -> dict[str, Any] | None:
        """Score the EMA predictor now (``iteration``): the ``kind`` ``val`` record for the log (means and
        per-image scores, the strip's path relative to the run folder), or None without validation images."""
        from invsr_cli.quality.metrics import psnr_y, ssim_y

        if not self.pairs:
            return None
        per_image, outputs = [], []
        for name, lr, hr in self.pairs:
            out = self._upscale(lr)
            outputs.append(out)
            per_image.append({"image": name, "psnr": psnr_y(out, hr), "ssim": ssim_y(out, hr),
                              "lpips": self._lpips_score(out, hr)})
        before = self._before(iteration, outputs)
        strip = self.folder / f"strip_{iteration}.png"
        atomic_write_bytes(strip, _png(self._strip(outputs, before)))

        def mean(key: str) -> float | None:
            vals = [r[key] for r in per_image]
            return None if any(v is None for v in vals) else float(sum(vals) / len(vals))

        return {"kind": "val", "iteration": int(iteration), "psnr": mean("psnr"), "ssim": mean("ssim"),
                "lpips": mean("lpips"), "images": len(per_image), "size": self.size,
                "strip": strip.relative_to(self.run_dir).as_posix(), "per_image": per_image}

    def _before(self, iteration: int, outputs: list[np.ndarray]) -> list[np.ndarray | None]:
        """The starting predictor's outputs of the strip's images: these ones at iteration 0 (kept in
        ``val/before/``), else the kept ones (None where there are none)."""
        names = [name for name, _, _ in self.pairs[:STRIP_IMAGES]]
        folder = self.folder / "before"
        if iteration == 0:
            for k, out in enumerate(outputs[:STRIP_IMAGES]):
                atomic_write_bytes(folder / f"{k}_{Path(names[k]).stem}.png", _png(out))
            return list(outputs[:STRIP_IMAGES])
        return [_read_png(folder / f"{k}_{Path(n).stem}.png") for k, n in enumerate(names)]

    def _strip(self, outputs: list[np.ndarray], before: list[np.ndarray | None]) -> np.ndarray:
        s, g = self.size, GAP
        rows = min(STRIP_IMAGES, len(self.pairs))
        strip = np.full((rows * s + (rows - 1) * g, 4 * s + 3 * g, 3), 255, np.uint8)
        for r in range(rows):
            _, lr, hr = self.pairs[r]
            start = before[r] if before[r] is not None and before[r].shape == hr.shape else np.full_like(hr, 128)
            lr_big = np.repeat(np.repeat(lr, 4, axis=0), 4, axis=1)[:s, :s]
            for c, panel in enumerate((lr_big, start, outputs[r], hr)):
                y, x = r * (s + g), c * (s + g)
                strip[y : y + s, x : x + s] = panel
        return strip

