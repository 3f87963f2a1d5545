"""``invsr train export RUN_DIR FILE.safetensors``: a run's EMA weights as a safetensors file to share.

The file holds the bare EMA state dict (the official key layout, ``encoder.*``; ``module.``/``_orig_mod.`` prefixes
stripped), loadable by ``invsr upscale --noise-predictor FILE.safetensors`` (strict keys, no pickle), and in its
safetensors metadata the provenance record under ``invsr:record`` (JSON): ``schema``, ``invsr`` (version),
``kind`` (``noise_predictor``), ``iteration``, ``training`` (the run's resolved settings that decide the weights,
no paths), ``training_images`` (how many files the inputs named), ``models`` (the identities of the SD model and of
the starting predictor, as upscale records them: a Hub repo and commit, or a local file's or folder's SHA-256, never
its path) and ``validation`` (the run's last validation scores at that iteration, when there are some). No
timestamps or paths: the same run exports the same record and tensors (the header's key order
is the safetensors library's). The file is written atomically.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from invsr_cli.base.atomic import atomic_write_bytes
from invsr_cli.base.errors import ConfigError, InputError

__all__ = ["RECORD_KEY", "SCHEMA", "TRAINING_KEYS", "ema_checkpoints", "export_ema", "read_export_record"]

RECORD_KEY = "invsr:record"
SCHEMA = 1
# The resolved settings that decide the trained weights (paths, resume and the output folder left out).
TRAINING_KEYS = ("iterations", "batch", "microbatch", "crop", "lr", "warmup", "ema_rate", "gan_after", "no_gan",
                 "no_lpips", "dtype", "seed", "grad_checkpointing", "save_every")
_EMA_RE = re.compile(r"^ema_model_(\d+)\.pth$")


def ema_checkpoints(run_dir: Path) -> dict[int, Path]:
    """``{iteration: path}`` of the EMA checkpoints in ``run_dir/ema_ckpts``."""
    folder = Path(run_dir) / "ema_ckpts"
    return {int(m.group(1)): p for p in folder.glob("ema_model_*.pth") if (m := _EMA_RE.match(p.name))}


def _identity(spec: str | None, sd_model: str) -> dict[str, Any]:
    from invsr_cli.engine.identity import model_identity

    ident = model_identity(sd_model, spec)
    return {name: {k: v for k, v in value.items() if k != "path"} for name, value in ident.items()}


def _models(config: dict[str, Any]) -> dict[str, Any]:
    init = str(config.get("init", "v5"))
    sd_model = str(config.get("sd_model"))
    if init == "scratch":
        ident = _identity(None, sd_model)
        return {"sd_model": ident["sd_model"], "init": "scratch"}
    ident = _identity(None if init == "v5" else init, sd_model)
    return {"sd_model": ident["sd_model"], "init": ident["noise_predictor"]}


def _training_images(config: dict[str, Any]) -> int | None:
    from invsr_cli.training.data import expand_inputs

    try:
        return len(expand_inputs([str(i) for i in config.get("inputs", [])]))
    except InputError:  # the training images moved since: the count is unknown, the weights are not
        return None


def _validation(run_dir: Path, iteration: int) -> dict[str, Any] | None:
    from invsr_cli.training.runlog import read_log

    found = [r for r in read_log(run_dir / "log.jsonl") if r.get("kind") == "val" and r.get("iteration") == iteration]
    if not found:
        return None
    return {k: found[-1].get(k) for k in ("psnr", "ssim", "lpips", "images")}


def export_record(run_dir: Path, iteration: int) -> dict[str, Any]:
    """The provenance record of the EMA weights of ``iteration`` in ``run_dir`` (see the module docstring)."""
    import yaml

    from invsr_cli.base.version import __version__

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise InputError(f"{run_dir}: no config.yaml there (not a run folder of invsr train)")
    config = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    record: dict[str, Any] = {"schema": SCHEMA, "invsr": __version__, "kind": "noise_predictor",
                              "iteration": int(iteration),
                              "training": {k: config[k] for k in TRAINING_KEYS if k in config},
                              "training_images": _training_images(config),
                              "models": _models(config)}
    val = _validation(run_dir, iteration)
    if val is not None:
        record["validation"] = val
    json.dumps(record)
    return record


def export_ema(run_dir: str | Path, out_file: str | Path, iteration: int | None = None) -> dict[str, Any]:
    """Write the EMA weights of ``iteration`` (default: the newest) of ``run_dir`` to ``out_file`` (.safetensors),
    with the provenance record in the metadata; atomically. Returns ``{"file", "iteration", "bytes", "record"}``."""
    from safetensors.torch import save

    from invsr_cli.engine.noise_predictor import check_noise_predictor_file, load_noise_predictor_state

    run_dir, out_file = Path(run_dir), Path(out_file)
    if out_file.suffix.lower() != ".safetensors":
        raise ConfigError(f"{out_file}: the export is a .safetensors file (name it FILE.safetensors)")
    found = ema_checkpoints(run_dir)
    if not found:
        raise InputError(f"{run_dir}: no EMA checkpoint in {run_dir / 'ema_ckpts'} (not a run folder, or no "
                         "checkpoint saved yet)")
    if iteration is None:
        iteration = max(found)
    elif iteration not in found:
        raise InputError(f"{run_dir}: no EMA checkpoint of iteration {iteration}; there are: "
                         f"{', '.join(str(i) for i in sorted(found))}")
    source = found[iteration]
    check_noise_predictor_file(source)  # strict keys and shapes, as upscale will load it
    state = load_noise_predictor_state(source)
    record = export_record(run_dir, iteration)
    data = save({k: v.detach().contiguous() for k, v in sorted(state.items())},
                metadata={"format": "pt", RECORD_KEY: json.dumps(record, separators=(",", ":"))})
    n = atomic_write_bytes(out_file, data)
    return {"file": str(out_file), "iteration": iteration, "bytes": n, "record": record}


def read_export_record(path: str | Path) -> dict[str, Any] | None:
    """The provenance record in an exported file's metadata, or None when it has none."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    text = meta.get(RECORD_KEY)
    return json.loads(text) if text else None
