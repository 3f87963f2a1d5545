"""``invsr eval``: run configurations over HR/LR pairs through the unit of work ``upscale`` uses and score them.

* Configurations (:func:`build_configs`): every ``--preset`` (``auto`` included) x every variation of the
  schedule (each ``--steps N`` and each ``--timesteps a,b,c``; none: the preset's own) x every
  ``--noise-predictor`` (short names ``v5`` / ``v5_diftune``, ``REPO:FILE`` or a local file; none: the default).
* One engine load per noise predictor; all the configurations of one predictor go through ONE
  :func:`invsr_cli.work.process.process_images` call (the same reading-ahead, tiles, batches, colour fix and
  sink as ``upscale``): each (image, configuration) is one task, and a policy that knows each task's
  configuration gives it its settings, so tiles of configurations sharing a schedule share engine batches.
  Outputs are kept in memory (``write=``), rounded to 8 bit and scored against the HR as they finish.
* Metrics: PSNR and SSIM on BT.601 Y (:mod:`invsr_cli.quality.metrics`), LPIPS-VGG when its weights are in
  the cache (:mod:`invsr_cli.quality.lpips`; otherwise the result says which command fetches them).
* :class:`EvalResult` holds the per-image rows, the per-configuration means and the auto agreement: for each
  image an ``auto`` configuration ran on, whether what ``auto`` made scored as well as the best of the plain
  preset configurations (same predictor, no schedule override) on that image, per metric.
* Ctrl-C (KeyboardInterrupt) ends the loop: the result so far comes back with ``interrupted`` set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from invsr_cli.base.errors import ConfigError, InvSRError, WeightsUnavailableError
from invsr_cli.base.paths import display_path
from invsr_cli.evaluation.pairs import Failure, Pair

__all__ = ["METRICS", "Config", "EvalResult", "build_configs", "run_eval"]

#: (name, higher is better)
METRICS: tuple[tuple[str, bool], ...] = (("psnr", True), ("ssim", True), ("lpips", False))


@dataclass(frozen=True)
class Config:
    """One configuration: a preset, optional schedule flags (``steps`` or ``timesteps``), a noise predictor."""

    label: str
    preset: str
    flags: Mapping[str, Any] = field(default_factory=dict)
    noise_predictor: str | None = None

    @property
    def plain(self) -> bool:
        """The preset as it is (what ``auto`` can pick)."""
        return not self.flags


def build_configs(presets: Sequence[str], steps: Sequence[int] = (), timesteps: Sequence[Sequence[int]] = (),
                  noise_predictors: Sequence[str | None] = ()) -> list[Config]:
    """The cross product, in the order given; labels are unique and short."""
    variations: list[tuple[str, dict[str, Any]]] = [(f"steps={n}", {"steps": int(n)}) for n in steps]
    variations += [("t=" + ",".join(map(str, t)), {"timesteps": tuple(int(x) for x in t)}) for t in timesteps]
    if not variations:
        variations = [("", {})]
    predictors = list(noise_predictors) or [None]
    configs = []
    for np_spec in predictors:
        for preset in presets or ["default"]:
            for vlabel, flags in variations:
                parts = [preset, vlabel] + ([f"np={np_spec}"] if len(predictors) > 1 else [])
                configs.append(Config(" ".join(p for p in parts if p), preset, flags, np_spec))
    labels = [c.label for c in configs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ConfigError(f"configurations repeat: {', '.join(dupes)}")
    return configs


@dataclass
class EvalResult:
    """What an evaluation measured. ``rows``: one dict per (image, configuration) scored: image, config, preset
    (the one that ran: ``auto``'s pick), psnr, ssim, lpips (None without weights), seconds."""

    configs: list[Config]
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    images: int = 0
    model_loads: int = 0
    lpips: str = "ok"  # "ok", or why it is missing (naming the command that fetches the weights)
    interrupted: bool = False
    seconds: float = 0.0  # wall time of the whole evaluation
    upscale_seconds: float = 0.0  # wall time inside process_images, scoring excluded (the upscaling itself)
    score_seconds: float = 0.0  # wall time scoring (PSNR, SSIM, LPIPS)
    load_seconds: float = 0.0  # wall time loading engines

    def summary(self) -> list[dict[str, Any]]:
        """Per configuration: its label, images scored, the mean of each metric (``inf`` stays ``inf``), seconds
        per image, and ``best``: the metrics in which it is the best."""
        out = []
        for c in self.configs:
            mine = [r for r in self.rows if r["config"] == c.label]
            row: dict[str, Any] = {"config": c.label, "images": len(mine)}
            for name, _ in METRICS:
                vals = [r[name] for r in mine if r.get(name) is not None]
                row[name] = float(np.mean(vals)) if vals else None
            row["seconds_per_image"] = float(np.mean([r["seconds"] for r in mine])) if mine else None
            out.append(row)
        for name, higher in METRICS:
            vals = [r[name] for r in out if r[name] is not None and not math.isnan(r[name])]
            if vals:
                best = max(vals) if higher else min(vals)
                for r in out:
                    r.setdefault("best", [])
                    if r[name] == best:
                        r["best"].append(name)
        for r in out:
            r.setdefault("best", [])
        return out

    def auto_agreement(self) -> dict[str, dict[str, int]] | None:
        """Per ``auto`` configuration and metric: ``{"agree": n, "images": m}``; None without an ``auto`` one."""
        autos = [c for c in self.configs if c.preset == "auto" and c.plain]
        if not autos:
            return None
        by_key = {(r["image"], r["config"]): r for r in self.rows}
        result: dict[str, dict[str, int]] = {}
        for auto in autos:
            plains = [c for c in self.configs if c.plain and c.preset != "auto"
                      and c.noise_predictor == auto.noise_predictor]
            for name, higher in METRICS:
                agree = total = 0
                for (image, label), row in by_key.items():
                    if label != auto.label or row.get(name) is None:
                        continue
                    scored = [(by_key[(image, c.label)][name], c.preset) for c in plains
                              if (image, c.label) in by_key and by_key[(image, c.label)].get(name) is not None]
                    if not scored:
                        continue
                    total += 1
                    best = max(v for v, _ in scored) if higher else min(v for v, _ in scored)
                    # what auto made scores as well as the best plain preset (the same preset, or one with the
                    # same settings: `noisy` and `default` share a schedule)
                    agree += (row[name] >= best) if higher else (row[name] <= best)
                if total:
                    result[f"{auto.label}:{name}"] = {"agree": agree, "images": total}
        return result

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; an infinite PSNR (identical images) is the string ``"inf"``."""

        def clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: ("inf" if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()} for r in rows]

        return {"configs": clean(self.summary()), "images": clean(self.rows), "auto_agreement": self.auto_agreement(),
                "failures": [{"input": f.input, "error": f.reason} for f in self.failures],
                "images_evaluated": self.images, "model_loads": self.model_loads, "lpips": self.lpips,
                "interrupted": self.interrupted, "seconds": round(self.seconds, 3),
                "upscale_seconds": round(self.upscale_seconds, 3), "score_seconds": round(self.score_seconds, 3),
                "load_seconds": round(self.load_seconds, 3)}


class _TaskPolicy:
    """A settings policy that gives each task the settings of its own configuration (keyed by the identity of the
    task's pixel array, which is what the unit of work hands a policy)."""

    def __init__(self, policies: Sequence[Any]) -> None:
        self.policies = list(policies)
        self.settings = self.policies[0].settings
        self.by_pixels: dict[int, int] = {}

    @property
    def choices(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for i, p in enumerate(self.policies):
            for name, s in p.choices.items():
                merged[f"{i}:{name}"] = s
        return merged

    @property
    def measures(self) -> bool:
        return any(p.measures for p in self.policies)

    def for_image(self, rgb: Any) -> Any:
        return self.policies[self.by_pixels[id(rgb)]].for_image(rgb)

    def fingerprint(self) -> str:
        return "|".join(p.fingerprint() for p in self.policies)


def _loaded(rgb8: np.ndarray) -> Any:
    from invsr_cli.imaging.decode import LoadedImage

    h, w = rgb8.shape[:2]
    return LoadedImage(Path("<eval>"), rgb8.astype(np.float32) / 255.0, None, grayscale=False, bit_depth=8,
                       format="png", icc=None, exif=None, width=w, height=h)


def _to8(rgb: Any) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype == np.uint8:
        return arr
    return np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def _lpips_score(model: Any, out8: np.ndarray, hr8: np.ndarray) -> float:
    import torch

    device = next(model.parameters()).device  # the engine's device: VGG16 on a CPU takes seconds per image

    def t(a: np.ndarray) -> Any:
        return torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1)[None].to(device)

    with torch.no_grad():
        return float(model(t(out8), t(hr8))[0])


def run_eval(
    pairs: Iterable[Pair | Failure] | Callable[[], Iterable[Pair | Failure]],
    configs: Sequence[Config],
    *,
    flags: Mapping[str, Any] | None = None,
    load_engine: Callable[[str | None], Any],
    lpips_model: Any = None,
    lpips_note: str = "ok",
    on_row: Callable[[dict[str, Any]], None] = lambda r: None,
    on_output: Callable[[Pair, Config, np.ndarray, dict[str, Any]], None] | None = None,
) -> EvalResult:
    """Evaluate ``configs`` on ``pairs`` (see the module docstring).

    ``pairs``: a callable returning a fresh iterable of pairs (called once per noise predictor: pairs are made
    again rather than held, so memory stays bounded; the degradation is deterministic), or the pairs themselves
    (then held for every predictor).

    ``flags``: settings every configuration shares (device, dtype, sd_model, tile, ...); a configuration's own
    flags and noise predictor go on top. ``load_engine(noise_predictor)`` loads one engine (called once per
    predictor). ``lpips_model``: a loaded LPIPS-VGG, or None (then ``lpips_note`` says why). ``on_row`` hears
    each scored row, ``on_output`` each output (uint8) with its pair, configuration and row (the HTML report).
    """
    from invsr_cli.settings.preset_files import load_policy

    started = time.perf_counter()
    result = EvalResult(list(configs), lpips=lpips_note)
    base = {k: v for k, v in (flags or {}).items() if v is not None}
    policies = {c.label: load_policy(c.preset, {**base, **c.flags,
                                                **({"noise_predictor": c.noise_predictor} if c.noise_predictor
                                                   else {})}) for c in configs}
    source = pairs if callable(pairs) else _replay(pairs)
    groups: dict[str | None, list[Config]] = {}
    for c in configs:
        groups.setdefault(c.noise_predictor, []).append(c)
    try:
        for first, (np_spec, group) in enumerate(groups.items()):
            stream = _Stream(source(), result if first == 0 else None)
            if not stream.any():  # nothing to evaluate: no engine load
                break
            t0 = time.perf_counter()
            engine = load_engine(np_spec)
            result.load_seconds += time.perf_counter() - t0
            result.model_loads += 1
            _run_group(result, stream, group, [policies[c.label] for c in group], engine, lpips_model, on_row,
                       on_output)
    except KeyboardInterrupt:
        result.interrupted = True
    result.seconds = time.perf_counter() - started
    return result


def _replay(pairs: Iterable[Pair | Failure]) -> Callable[[], Iterable[Pair | Failure]]:
    """A one-shot iterable, kept so every noise predictor sees the same pairs (a sequence is used as it is)."""
    kept = pairs if isinstance(pairs, Sequence) else list(pairs)
    return lambda: kept


class _Stream:
    """The pairs of one pass, one at a time; the first pass records the failures and the image count."""

    def __init__(self, items: Iterable[Pair | Failure], result: EvalResult | None) -> None:
        self.items = iter(items)
        self.result = result
        self.head: Pair | None = None

    def _next_pair(self) -> Pair | None:
        for item in self.items:
            if isinstance(item, Failure):
                if self.result is not None:
                    self.result.failures.append(item)
                continue
            if self.result is not None:
                self.result.images += 1
            return item
        return None

    def any(self) -> bool:
        self.head = self._next_pair()
        return self.head is not None

    def __iter__(self) -> Iterator[Pair]:
        pair = self.head
        while pair is not None:
            yield pair
            pair = self._next_pair()


def _run_group(result: EvalResult, pairs: Iterable[Pair], group: Sequence[Config], policies: Sequence[Any],
               engine: Any, lpips_model: Any, on_row: Callable[[dict[str, Any]], None],
               on_output: Callable[..., None] | None) -> None:
    """Every (pair, configuration) of one noise predictor through one process_images call, scored as each ends.
    Tasks are made as the unit of work asks for them (it reads a bounded number ahead) and a pair is dropped once
    all its outputs are scored, so memory stays bounded whatever the number of photos."""
    from invsr_cli.work.job import Job
    from invsr_cli.work.process import ImageTask, process_images

    policy = _TaskPolicy(policies)
    meta: dict[int, tuple[Pair, Config]] = {}
    by_input: dict[str, int] = {}

    def tasks() -> Iterator[Any]:
        for pi, pair in enumerate(pairs):
            for ci, c in enumerate(group):
                index = pi * len(group) + ci
                loaded = _loaded(pair.lr)
                policy.by_pixels[id(loaded.rgb)] = ci
                name = f"{pair.rel} [{c.label}]"
                if name in by_input:  # the same relative path from two inputs
                    name = f"{name} #{pi}"
                job = Job(Path(name), Path(name), PurePosixPath(str(pair.rel)), "png")
                by_input[str(job.input)] = by_input[display_path(job.input)] = index
                meta[index] = (pair, c)
                yield ImageTask(job=job, index=index, image=loaded)

    outputs: dict[int, np.ndarray] = {}

    def keep(img: Any, rgb: Any, models: Any) -> tuple[int, int]:
        out8 = outputs[img.task.index] = _to8(rgb)
        return out8.shape[1], out8.shape[0]

    t0, scored_before = time.perf_counter(), result.score_seconds
    try:
        for outcome in process_images(tasks(), policy, engine, write=keep):
            index = by_input[outcome.input]
            pair, c = meta.pop(index)
            if outcome.status != "done" or index not in outputs:
                outputs.pop(index, None)
                result.failures.append(Failure(f"{pair.source} [{c.label}]", outcome.reason or outcome.status))
                continue
            t1 = time.perf_counter()
            out8 = outputs.pop(index)
            try:
                row = _score(pair, c, out8, outcome, lpips_model)
            except InvSRError as e:
                result.failures.append(Failure(f"{pair.source} [{c.label}]", str(e)))
                continue
            result.score_seconds += time.perf_counter() - t1
            result.rows.append(row)
            on_row(row)
            if on_output is not None:
                on_output(pair, c, out8, row)
    finally:
        result.upscale_seconds += time.perf_counter() - t0 - (result.score_seconds - scored_before)


def _score(pair: Pair, c: Config, out8: np.ndarray, outcome: Any, lpips_model: Any) -> dict[str, Any]:
    from invsr_cli.quality.metrics import psnr_y, ssim_y

    if out8.shape != pair.hr.shape:
        raise InvSRError(f"{pair.source}: output {out8.shape[1]}x{out8.shape[0]} is not the HR's size")
    return {
        "image": str(pair.rel), "config": c.label, "preset": outcome.preset or c.preset,
        "psnr": psnr_y(out8, pair.hr), "ssim": ssim_y(out8, pair.hr),
        "lpips": _lpips_score(lpips_model, out8, pair.hr) if lpips_model is not None else None,
        "seconds": round(float(outcome.seconds), 4),
    }


def lpips_or_reason(device: Any = "cpu") -> tuple[Any, str]:
    """The cached LPIPS-VGG, or (None, why) when its weights are not there."""
    from invsr_cli.quality.lpips import load_lpips

    try:
        return load_lpips(device), "ok"
    except WeightsUnavailableError as e:
        return None, str(e)
