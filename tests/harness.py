"""The one test harness: the real `invsr` executable, the tiny-model flags and settings, temporary files, manifest
records, and an in-process run. Every test file takes these from here (tests/README.md says which test to copy).

A test that calls :func:`invsr` or :func:`invsr_popen` (or starts any other process) is marked ``slow``; the
conftest's guard fails one that is not.

Subprocesses get :data:`ENV`: offline (``HF_HUB_OFFLINE=1``: nothing downloads), no colour, one torch thread
(``OMP_NUM_THREADS=1``: on a shared 2-core box torch's default thread pool spins and makes a tiny model 20x slower)
and a strict UTF-8 stdout (``PYTHONIOENCODING=utf-8:strict``, as under ``LANG=en_US.UTF-8``), so a report that
cannot carry a non-UTF-8 file name fails instead of passing under the C.UTF-8 locale's lenient stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from invsr_cli.work.report import Reporter

__all__ = [
    "ENV", "INVSR", "TINY_SETTINGS", "Collect", "accelerate_launch", "image_lines", "invsr", "invsr_popen",
    "json_lines", "manifest_records", "model_flags", "run_in_process", "subprocess_env", "temps", "text",
    "tiny_settings", "upscale_json",
]

INVSR = str(Path(sys.executable).parent / "invsr")  # the entry point installed beside this Python
ENV = {"HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8:strict"}
TINY_SETTINGS = {"device": "cpu", "tile": 32, "overlap": 8}  # small tiles, so a 48x40 input already tiles


# -- the real executable ------------------------------------------------------------------------------------------


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with :data:`ENV` and ``extra`` over it."""
    return {**os.environ, **ENV, **(extra or {})}


def invsr(args: Iterable[Any], *, cwd: Path | str | None = None, stdin: bytes | str | None = None,
          env: Mapping[str, str] | None = None, timeout: float = 300, text: bool = False,
          environ: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``invsr ARGS...`` (each arg through ``str``) to the end, capturing stdout and stderr (bytes, or str with
    ``text``). The environment is ``environ`` if given, else :func:`subprocess_env` with ``env`` over it."""
    return subprocess.run([INVSR, *map(str, args)], cwd=cwd, input=stdin, capture_output=True, text=text,
                          env=dict(environ) if environ is not None else subprocess_env(env), timeout=timeout)


def upscale_json(*args: Any, **kw: Any) -> subprocess.CompletedProcess:
    """``invsr upscale ARGS... --json`` (see :func:`invsr` for ``kw``); read it with :func:`image_lines`."""
    return invsr(["upscale", *args, "--json"], **kw)


def invsr_popen(args: Iterable[Any], *, env: Mapping[str, str] | None = None,
                environ: Mapping[str, str] | None = None, **kw: Any) -> subprocess.Popen:
    """Start ``invsr ARGS...`` with piped stdout and stderr (unless ``kw`` says otherwise) and return it; the
    environment as for :func:`invsr`."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    env = dict(environ) if environ is not None else subprocess_env(env)
    return subprocess.Popen([INVSR, *map(str, args)], env=env, **kw)


def accelerate_launch(processes: int, args: Iterable[Any], *, timeout: float = 300,
                      env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes N -m invsr_cli ARGS...`` with this Python (so this checkout's
    code), no config file, a free rendezvous port, :func:`subprocess_env` (one torch thread per process); on a
    machine without GPUs pass ``--device cpu`` in ``args``: the processes then talk through gloo."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "invsr_cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, env=subprocess_env(env), timeout=timeout)


def text(p: subprocess.CompletedProcess) -> str:
    """stdout then stderr as one string, for an assertion's message."""
    def s(b: bytes | str | None) -> str:
        return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

    return s(p.stdout) + s(p.stderr)


def json_lines(data: bytes | str) -> list[dict]:
    """The JSON objects of a --json stdout, one a line; a line that does not parse (cut short by a kill) is left
    out."""
    lines = data.decode("utf-8") if isinstance(data, bytes) else data
    objs = []
    for line in lines.splitlines():
        try:
            objs.append(json.loads(line))
        except ValueError:
            continue
    return objs


def image_lines(p: subprocess.CompletedProcess) -> dict[str, dict]:
    """The ``"type": "image"`` objects of a --json run, by input file name. Every stdout line must parse."""
    out = p.stdout.decode() if isinstance(p.stdout, bytes) else p.stdout
    return {Path(o["input"]).name: o for o in map(json.loads, out.splitlines()) if o["type"] == "image"}


# -- the tiny models -------------------------------------------------------------------------------------------


def model_flags(tiny_models: Any, *, device: str | None = "cpu") -> list[str]:
    """The command-line flags that point `invsr` at the tiny random models (conftest's ``tiny_models``), with 32 px
    tiles and 8 px overlap; ``--device DEVICE`` unless ``device`` is None (for ``--devices``). The conftest fixture
    ``tiny_flags`` is this with the defaults."""
    flags = ["--sd-model", str(tiny_models.sd_dir), "--noise-predictor", str(tiny_models.noise_predictor_path)]
    if device is not None:
        flags += ["--device", device]
    return flags + ["--tile", str(TINY_SETTINGS["tile"]), "--overlap", str(TINY_SETTINGS["overlap"])]


def tiny_settings(tiny_models: Any = None, **flags: Any) -> Any:
    """``resolve_settings`` of :data:`TINY_SETTINGS` (and the tiny models' paths, when given) with ``flags`` over
    them: the in-process twin of :func:`model_flags`."""
    from invsr_cli.settings.settings import resolve_settings

    paths = {} if tiny_models is None else {"sd_model": str(tiny_models.sd_dir),
                                            "noise_predictor": str(tiny_models.noise_predictor_path)}
    return resolve_settings(None, {**paths, **TINY_SETTINGS, **flags})


# -- files ----------------------------------------------------------------------------------------------------


def temps(folder: Path | str) -> list[str]:
    """Every temporary file (an atomic write's ``TEMP_SUFFIX``) under ``folder``: a finished run leaves none."""
    from invsr_cli.base.atomic import TEMP_SUFFIX

    return [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if f.endswith(TEMP_SUFFIX)]


def manifest_records(folder: Path | str, *, strict: bool = False) -> list[dict]:
    """Every record of every manifest in ``folder`` (the run's and each shard's), in file then line order. A line
    that does not parse (cut short by a kill) is left out, or with ``strict`` raises (every line must be whole)."""
    from invsr_cli.run.manifest import folder_manifests

    paths = folder_manifests(Path(folder))
    if strict:
        return [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    return [rec for path in paths for rec in json_lines(path.read_bytes())]


# -- in process -----------------------------------------------------------------------------------------------


class Collect(Reporter):
    """A reporter that keeps what it is told: ``outcomes``, ``warnings`` and ``infos``."""

    def __init__(self) -> None:
        self.outcomes: list[Any] = []
        self.warnings: list[str] = []
        self.infos: list[str] = []

    def outcome(self, o: Any) -> None:
        self.outcomes.append(o)

    def warning(self, text: str) -> None:
        self.warnings.append(text)

    def info(self, text: str) -> None:
        self.infos.append(text)

    def status(self, name: str) -> tuple[str, str]:
        """(status, reason) of the one outcome whose input is named ``name``."""
        (o,) = [o for o in self.outcomes if Path(o.input).name == name]
        return o.status, o.reason


def run_in_process(inputs: Sequence[Path | str], out: Path, *, settings: Any = None, reporter: Any = None,
                   **kw: Any) -> tuple[Any, Any]:
    """Discover ``inputs`` into ``out`` and :func:`~invsr_cli.run.runner.run_batch` them in this process without
    signal handlers; ``settings`` defaults to :func:`tiny_settings` (give ``engine=`` or ``executor=`` in ``kw``,
    with the other ``run_batch`` keywords). Returns ``(reporter, summary)``; the reporter is a :class:`Collect`
    unless one is given."""
    from invsr_cli.run.discover import discover
    from invsr_cli.run.runner import run_batch

    found = discover([str(p) for p in inputs], out)
    reporter = reporter if reporter is not None else Collect()
    kw.setdefault("handle_signals", False)
    summary = run_batch(found.jobs, settings if settings is not None else tiny_settings(), output_dir=out,
                        reporter=reporter, **kw)
    return reporter, summary
