"""`invsr doctor`: is this machine ready to upscale? One :class:`Check` per question, each pass / warn / fail
with the fix.

Checks, in order: Python; the torch build (CPU/CUDA/ROCm/MPS); the devices (names, free memory); fp16/bf16
support; the versions of torch, diffusers, transformers, huggingface_hub and accelerate against
:data:`SUPPORTED`; the weights (present in the Hugging Face cache or at the given paths, their sizes, the
safetensors headers of SD-Turbo and a strict key check of the noise predictor, read on the CPU: SD is never
loaded); the cache location, its free disk and offline mode; OUTPUT_DIR (written to for real, free space); a
non-ASCII file name round trip; and a self-test that runs the whole pipeline (``run_batch``: read, tile, engine,
blend, write, manifest) on tiny random models built in a temporary folder, so it proves the install works before
the weights are downloaded.

Nothing here downloads: the weights are looked up with ``huggingface_hub.try_to_load_from_cache`` only. Warnings
never make the machine "not ready"; a failed check does (``invsr doctor`` exits 1).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Check", "SUPPORTED", "OPTIONAL", "run_checks", "is_ready", "format_line"]

PASS, WARN, FAIL = "pass", "warn", "fail"

# Supported version ranges (PEP 440). The required ones mirror pyproject.toml's dependencies (a test keeps them
# equal); the optional ones may be missing (a warning saying what they give), but a present one that is too old
# fails: accelerate (diffusers uses it to load faster when present) and PyAV (videos: the `video` extra's range).
SUPPORTED: dict[str, str] = {
    "torch": ">=2.1,<3",
    "diffusers": ">=0.30",
    "transformers": ">=4.40",
    "huggingface_hub": ">=0.23",
    "accelerate": ">=0.30",
    "av": ">=14",
}
OPTIONAL_WHY = {"accelerate": "diffusers loads models faster with it",
                "av": "videos need it: pip install 'invsr-cli[video]'"}
OPTIONAL = frozenset(OPTIONAL_WHY)

SD_DOWNLOAD_BYTES = 5_300_000_000  # SD-Turbo's files invsr fetches, plus the noise predictor, rounded up
MIN_OUTPUT_FREE = 1_000_000_000  # below this, a batch of 4k outputs may not fit
NON_ASCII_NAME = "invsr-doctor-ünïcödé-日本語-😀 ✓.png"


@dataclass(frozen=True)
class Check:
    """One answer: ``status`` is pass, warn or fail; ``fix`` says what to do (empty on pass)."""

    name: str
    status: str
    detail: str
    fix: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_ready(checks: Iterable[Check]) -> bool:
    """Ready to run: no check failed (warnings allowed)."""
    return all(c.status != FAIL for c in checks)


def format_line(c: Check) -> str:
    """One line per check: ``status  name  detail  [fix: ...]``."""
    text = f"{c.status:<4}  {c.name:<24} {c.detail}"
    if c.fix:
        text += f"  -> fix: {c.fix}"
    return " ".join(text.split("\n"))


def run_checks(
    output_dir: str | os.PathLike[str] | None = None,
    *,
    sd_model: str | None = None,
    noise_predictor: str | None = None,
    self_test: bool = True,
    on_check: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Run every check (see the module docstring) and return them in order; ``on_check`` sees each as it ends.

    A check that raises an unexpected exception is reported as failed with the exception, never propagated.
    """
    from invsr_cli.engine.weights import DEFAULT_SD_MODEL

    sd = sd_model or DEFAULT_SD_MODEL
    steps: list[tuple[str, Callable[[], Check | list[Check]]]] = [
        ("python", _check_python),
        ("torch build", _check_torch_build),
        ("devices", _check_devices),
        ("precision", _check_precision),
        ("packages", _check_packages),
        ("weights: SD-Turbo", lambda: _check_sd_weights(sd)),
        ("weights: noise predictor", lambda: _check_noise_predictor(noise_predictor)),
        ("hf cache", lambda: _check_hf_cache(sd, noise_predictor)),
    ]
    if output_dir is not None:
        steps.append(("output folder", lambda: _check_output_dir(Path(output_dir))))
    steps.append(("non-ascii paths", lambda: _check_non_ascii(Path(output_dir) if output_dir is not None else None)))
    if self_test:
        steps.append(("self-test", _check_self_test))
    out: list[Check] = []
    for name, fn in steps:
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # a doctor reports; it does not crash on the thing it diagnoses
            result = Check(name, FAIL, f"the check itself failed: {type(e).__name__}: {e}",
                           "report this with the output of `invsr doctor --json`")
        dt = round(time.perf_counter() - t0, 3)
        for c in result if isinstance(result, list) else [result]:
            c = Check(c.name, c.status, c.detail, c.fix, c.seconds or dt)  # a check that timed itself says so
            out.append(c)
            if on_check is not None:
                on_check(c)
    return out


# -- python, torch, devices, precision -------------------------------------------------------------------------


def _check_python() -> Check:
    v = sys.version_info
    text = f"{platform.python_version()} ({sys.executable})"
    if v < (3, 10):
        return Check("python", FAIL, text, "install Python 3.10 or newer")
    return Check("python", PASS, text)


def _torch_build(torch: Any) -> str:
    if getattr(torch.version, "hip", None):
        return f"ROCm {torch.version.hip}"
    if getattr(torch.version, "cuda", None):
        return f"CUDA {torch.version.cuda}"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_built():
        return "MPS (Apple)"
    return "CPU"


def _check_torch_build() -> Check:
    try:
        import torch
    except Exception as e:
        return Check("torch build", FAIL, f"cannot import torch: {type(e).__name__}: {e}",
                     "pip install torch (the build for your machine: see README, Set-up)")
    build = _torch_build(torch)
    return Check("torch build", PASS, f"torch {torch.__version__}, {build} build")


def _meminfo_available() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def _gb(n: float | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _check_devices() -> Check:
    import torch

    parts = []
    cpu = f"cpu ({os.cpu_count()} cores, {_gb(_meminfo_available())} RAM available)"
    gpus = 0
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            name = torch.cuda.get_device_name(i)
            try:
                free, total = torch.cuda.mem_get_info(i)
                mem = f"{_gb(free)} free of {_gb(total)}"
            except RuntimeError as e:
                mem = f"memory unknown: {e}"
            parts.append(f"cuda:{i} {name} ({mem})")
            gpus += 1
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        parts.append("mps (Apple GPU; free memory not reported)")
        gpus += 1
    parts.append(cpu)
    detail = "; ".join(parts)
    if gpus:
        return Check("devices", PASS, detail)
    build = _torch_build(torch)
    if build.startswith(("CUDA", "ROCm")):
        fix = (f"this {build} build of torch sees no GPU: check the driver (nvidia-smi / rocm-smi) and "
               "CUDA_VISIBLE_DEVICES; until then invsr runs on the CPU")
    else:
        fix = ("no GPU: invsr runs on the CPU (~25-30 s per 128-px tile in fp32 on 2 cores); for a GPU install the "
               "torch build for your CUDA (README, Set-up)")
    return Check("devices", WARN, detail, fix)


def _cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def _check_precision() -> Check:
    """What each dtype means on the device invsr picks by default; tries a small matmul in each."""
    import torch

    from invsr_cli.engine.devices import resolve_device

    dev = resolve_device("auto")
    works = {}
    for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        try:
            a = torch.ones(8, 8, device=dev, dtype=dt)
            works[name] = bool(torch.isfinite((a @ a).float()).all())
        except Exception:
            works[name] = False
    if dev.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported() and works["bf16"]
        detail = (f"{dev}: fp16 {'yes' if works['fp16'] else 'NO'} (the default on a GPU), "
                  f"bf16 {'yes' if bf16 else 'no'}")
        if not works["fp16"]:
            return Check("precision", WARN, detail, "use --dtype fp32")
        return Check("precision", PASS, detail)
    if dev.type == "mps":
        return Check("precision", PASS, f"mps: fp16 {'yes' if works['fp16'] else 'no'}, "
                     f"bf16 {'yes' if works['bf16'] else 'no'}")
    flags = _cpu_flags()
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    bf16 = (f"bf16 {'fast (' + ', '.join(native) + ')' if native else 'emulated (slower than fp32 here)'}"
            if works["bf16"] else "bf16 no")
    detail = f"cpu: fp32 (the default on a CPU); {bf16}; fp16 {'runs, slowly' if works['fp16'] else 'no'}"
    return Check("precision", PASS, detail)


# -- packages ---------------------------------------------------------------------------------------------------


def installed_version(dist: str) -> str | None:
    """The installed version of ``dist`` as importlib.metadata reports it (first on sys.path), or None."""
    from importlib import metadata

    for name in {dist, dist.replace("_", "-")}:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
    return None


def _check_packages() -> list[Check]:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    out = []
    for dist, spec in SUPPORTED.items():
        name = f"package {dist}"
        version = installed_version(dist)
        if version is None:
            if dist in OPTIONAL:
                out.append(Check(name, WARN, f"not installed (optional; supported {spec})",
                                 f"pip install '{dist}{spec}' ({OPTIONAL_WHY[dist]})"))
            else:
                out.append(Check(name, FAIL, f"not installed (needs {spec})", f"pip install '{dist}{spec}'"))
            continue
        try:
            ok = Version(version) in SpecifierSet(spec)
        except InvalidVersion:
            ok = False
        if ok:
            out.append(Check(name, PASS, f"{version} (supported {spec})"))
        else:
            out.append(Check(name, FAIL, f"{version} is outside the supported range {spec}",
                             f"pip install --upgrade '{dist}{spec}'"))
    return out


# -- weights ----------------------------------------------------------------------------------------------------


def _safetensors_header_problem(path: Path) -> str | None:
    """Reads only the header: is the file complete (the data its header describes is all there)?"""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > 100_000_000:
                return "header too large: not a safetensors file"
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
        return f"unreadable header ({type(e).__name__})"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    size = path.stat().st_size
    if size != 8 + n + end:
        return f"truncated or padded: {size} bytes, the header describes {8 + n + end}"
    return None


def _weights(sd: str, noise_predictor: str | None) -> Any:
    """Where the weights are, looked up the way loading does (one resolve), offline: never a download."""
    from invsr_cli.engine.weights import resolve

    return resolve(sd_model=sd, noise_predictor=noise_predictor, fetch=False)  # the real offline mode, said once


def _check_sd_weights(spec: str) -> Check:
    name = "weights: SD-Turbo"
    src = _weights(spec, None).sd_model
    if src.missing:
        fix = ("`invsr models download` on a machine with network (same HF_HOME), or pass a local folder with "
               "--sd-model DIR")
        shown = ", ".join(src.missing[:4]) + (f" and {len(src.missing) - 4} more" if len(src.missing) > 4 else "")
        return Check(name, FAIL, f"{spec}: missing {shown} in {src.where}", fix)
    present = [path for _, path, _ in src.files if path is not None]
    total = sum(p.stat().st_size for p in present)
    for path in present:
        if path.suffix == ".safetensors":
            problem = _safetensors_header_problem(path)
            if problem:
                return Check(name, FAIL, f"{path}: {problem}", "delete the file and run `invsr models download` again")
    return Check(name, PASS, f"{spec}: {len(present)} files, {_gb(total)}, complete, in {src.path}")


def _check_noise_predictor(spec: str | None) -> Check:
    """Found without downloading, then a strict key and shape check: the state is read on the CPU and compared
    with the architecture built on the meta device (nothing is allocated, nothing goes to a GPU)."""
    from invsr_cli.base.errors import InvSRError
    from invsr_cli.engine.noise_predictor import NoisePredictorConfig, check_noise_predictor_file
    from invsr_cli.engine.weights import DEFAULT_NOISE_PREDICTOR, DEFAULT_SD_MODEL

    name = "weights: noise predictor"
    spec_s = spec or DEFAULT_NOISE_PREDICTOR
    src = _weights(DEFAULT_SD_MODEL, spec).noise_predictor
    if src.path is None or src.missing:
        return Check(name, FAIL, f"{spec_s}: not found in {src.where}",
                     "`invsr models download` on a machine with network (same HF_HOME), or pass a local file "
                     "with --noise-predictor FILE")
    path = src.path
    size = path.stat().st_size
    try:
        cfg, n_tensors = check_noise_predictor_file(path)
    except InvSRError as e:
        return Check(name, FAIL, f"{path} ({size / 1e6:.1f} MB): {e}",
                     "the file is not an InvSR noise predictor checkpoint: download it again "
                     "(`invsr models download`) or pass the right file with --noise-predictor")
    official = cfg == NoisePredictorConfig()
    if spec is None and not official:
        return Check(name, FAIL, f"{path}: keys load strictly but the architecture is not the official one ({cfg})",
                     "download the official checkpoint again: `invsr models download`")
    kind = "official architecture" if official else f"custom architecture {cfg.block_out_channels}"
    return Check(name, PASS, f"{path} ({size / 1e6:.1f} MB): {n_tensors} tensors, strict key check ok, {kind}")


def _existing_parent(p: Path) -> Path:
    p = p.expanduser().absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def _check_hf_cache(sd: str, noise_predictor: str | None) -> Check:
    from invsr_cli.engine.weights import hub_cache_dir, is_offline

    cache = hub_cache_dir()
    base = _existing_parent(cache)
    free = shutil.disk_usage(base).free if base.is_dir() else None
    offline = is_offline()
    detail = f"{cache} ({'exists' if cache.is_dir() else 'not created yet'}), {_gb(free)} free, " \
             f"offline mode {'on (HF_HUB_OFFLINE)' if offline else 'off'}"
    if free is not None and free < SD_DOWNLOAD_BYTES and not _all_weights_present(sd, noise_predictor):
        return Check("hf cache", WARN, detail, f"the weights need about {_gb(SD_DOWNLOAD_BYTES)}: free space or "
                     "point HF_HOME at a bigger disk")
    if not os.access(base, os.W_OK) and not _all_weights_present(sd, noise_predictor):
        return Check("hf cache", WARN, detail + f"; {base} is not writable",
                     "set HF_HOME to a writable folder before `invsr models download`")
    return Check("hf cache", PASS, detail)


def _all_weights_present(sd: str, noise_predictor: str | None) -> bool:
    w = _weights(sd, noise_predictor)
    return not w.sd_model.missing and not w.noise_predictor.missing and w.noise_predictor.path is not None


# -- files ------------------------------------------------------------------------------------------------------


def _check_output_dir(out: Path) -> Check:
    """Really writes (a temporary file, fsynced, renamed, removed): permission bits say nothing to root, a
    read-only mount or an immutable folder."""
    name = "output folder"
    target = out if out.is_dir() else _existing_parent(out)
    if out.exists() and not out.is_dir():
        return Check(name, FAIL, f"{out} exists and is not a folder", "give a folder as OUTPUT_DIR")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".invsr-doctor-", dir=target)
        try:
            os.write(fd, b"invsr doctor")
            os.fsync(fd)
        finally:
            os.close(fd)
        final = Path(tmp).with_suffix(".check")
        os.replace(tmp, final)
        final.unlink()
    except OSError as e:
        what = "" if target == out else f" (it does not exist yet; its nearest existing parent is {target})"
        return Check(name, FAIL, f"cannot write in {target}{what}: {e.strerror or e}",
                     "choose a writable OUTPUT_DIR, or fix its permissions / mount (read-only file system?)")
    free = shutil.disk_usage(target).free
    state = "exists" if target == out else f"will be created under {target}"
    detail = f"{out} ({state}): writable, {_gb(free)} free"
    if free < MIN_OUTPUT_FREE:
        return Check(name, WARN, detail, "free some space: a 4k PNG output is 20-40 MB")
    return Check(name, PASS, detail)


def _check_non_ascii(out: Path | None) -> Check:
    """Writes an image under a non-ASCII name with invsr's own writer, lists the folder, reads it back."""
    import numpy as np

    from invsr_cli.imaging.decode import read_image
    from invsr_cli.imaging.encode import write_image

    name = "non-ascii paths"
    where = out if out is not None and out.is_dir() else None
    enc = sys.getfilesystemencoding()
    try:
        tmpdir = tempfile.TemporaryDirectory(prefix=".invsr-doctor-", dir=where)
    except OSError:  # OUTPUT_DIR not writable: the output folder check says so; test the names elsewhere
        where = None
        tmpdir = tempfile.TemporaryDirectory(prefix=".invsr-doctor-")
    with tmpdir as tmp:
        folder = Path(tmp) / "ðir-日本"
        try:
            folder.mkdir()
            src = folder / "source.png"
            from PIL import Image

            rgb = (np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5)
            Image.fromarray(rgb).save(src)
            loaded = read_image(src)
            path = folder / NON_ASCII_NAME
            write_image(path, loaded.rgb, source=loaded, format="png")
            listed = [p.name for p in folder.iterdir()]
            back = read_image(path)
            ok = NON_ASCII_NAME in listed and np.array_equal(
                np.round(back.rgb * 255).astype(np.uint8), rgb)
        except (OSError, UnicodeError, ValueError) as e:
            return Check(name, FAIL, f"cannot write or read {NON_ASCII_NAME!r} (file system encoding {enc}): {e}",
                         "run under a UTF-8 locale (export LANG=C.UTF-8) on a file system that stores UTF-8 names")
        place = "in OUTPUT_DIR" if where else "in the temporary folder"
        if not ok:
            return Check(name, FAIL, f"{NON_ASCII_NAME!r} did not come back intact {place} (listed: {listed})",
                         "run under a UTF-8 locale (export LANG=C.UTF-8)")
    return Check(name, PASS, f"wrote, listed and read back {NON_ASCII_NAME!r} {place} (encoding {enc})")


# -- self-test --------------------------------------------------------------------------------------------------


def _check_self_test() -> Check:
    """The real pipeline on tiny random models: proves torch, diffusers, transformers, the engine, tiling and
    image I/O work together, without the real weights. Runs on the default device in fp32."""
    import numpy as np
    from PIL import Image

    from invsr_cli.engine.devices import resolve_device
    from invsr_cli.engine.start import quiet_libraries
    from invsr_cli.engine.testing import build_tiny_models
    from invsr_cli.imaging.decode import read_image
    from invsr_cli.run.discover import discover
    from invsr_cli.run.runner import run_batch
    from invsr_cli.settings.preset_files import load_policy

    name = "self-test"
    started = time.perf_counter()  # the detail's seconds are the check's own (its `seconds` field), not the run's
    quiet_libraries()  # no progress bars from saving the tiny models
    device = str(resolve_device("auto"))
    with tempfile.TemporaryDirectory(prefix="invsr-doctor-") as tmp:
        root = Path(tmp)
        tiny = build_tiny_models(root / "models", seed=0)
        inp = root / "in"
        inp.mkdir()
        rng = np.random.default_rng(0)
        w, h = 40, 24  # not a multiple of 16: padding and tiling are exercised too
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 200 + rng.normal(0, 10, (h, w, 3)) + 20
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(inp / "selftest.png")
        policy = load_policy(None, {"sd_model": str(tiny.sd_dir), "noise_predictor": str(tiny.noise_predictor_path),
                                    "device": device, "dtype": "fp32", "tile": 16, "overlap": 8})
        out = root / "out"
        found = discover([str(inp)], out, suffix=policy.run.suffix, fmt=policy.run.format)
        t0 = time.perf_counter()
        summary = run_batch(found.jobs, policy, output_dir=out, handle_signals=False)
        dt = time.perf_counter() - t0
        fix = "reinstall: pip install --force-reinstall -e . (or the wheel); then `invsr doctor --json` for detail"
        if summary.failed or summary.processed != 1:
            reasons = "; ".join(o.reason for o in summary.outcomes if o.reason) or "no output"
            return Check(name, FAIL, f"the pipeline on tiny models failed on {device}: {reasons}", fix)
        result = read_image(out / "selftest.png")
        finite = bool(np.isfinite(result.rgb).all())
        if (result.width, result.height) != (4 * w, 4 * h) or not finite or float(result.rgb.std()) < 1e-3:
            return Check(name, FAIL, f"the output is {result.width}x{result.height} (expected {4 * w}x{4 * h}), "
                         f"finite={finite}, std={float(result.rgb.std()):.4f}", fix)
    total = round(time.perf_counter() - started, 3)
    return Check(name, PASS, f"the whole pipeline on tiny random models on {device}: {w}x{h} -> {4 * w}x{4 * h}, "
                 f"finite, {total:.1f} s (the run itself {dt:.1f} s)", seconds=total)
