"""One worker loop (issue 16 item 1): an unexpected exception on one image (here the engine raising a plain
``RuntimeError`` on that image's tiles, tests/faults.py) is that image's failed outcome, and the run goes on, in
every executor: this process, ``--devices cpu,cpu`` (spawned workers; the error is no worker death) and
``--ray local`` (a real local Ray cluster). The other images are done, byte-identical to a run without the fault,
and the run's summary has one failure (exit 1 in the CLI)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from invsr_cli.run.discover import discover
from invsr_cli.run.runner import run_batch
from invsr_cli.settings.settings import resolve_settings
from invsr_cli.work.report import Reporter
from tests import imagegen
from tests.faults import FlatTileBomb, flat_tile_bomb_loader
from tests.threads import torch_threads


class _Heard(Reporter):
    """A -v reporter that keeps what it is told."""

    verbose = True

    def __init__(self) -> None:
        self.infos: list[str] = []
        self.warnings: list[str] = []

    def info(self, text: str) -> None:
        self.infos.append(text)

    def warning(self, text: str) -> None:
        self.warnings.append(text)


def _settings(tiny_models, **flags):
    return resolve_settings(None, {"sd_model": str(tiny_models.sd_dir),
                                   "noise_predictor": str(tiny_models.noise_predictor_path),
                                   "device": "cpu", "dtype": "fp32", "tile": 32, "overlap": 8, **flags})


def _inputs(src: Path) -> Path:
    """Four images; ``b_flat.png`` is one colour: the fault engine raises on its tiles."""
    src.mkdir(parents=True, exist_ok=True)
    imagegen.rgb(src / "a.png", 40, 28, seed=1)
    Image.new("RGB", (24, 20), (90, 90, 90)).save(src / "b_flat.png")
    imagegen.rgb(src / "c.png", 24, 20, seed=2)
    imagegen.rgb(src / "d.png", 32, 24, seed=3)
    return src


@pytest.fixture(scope="module")
def reference(tiny_models, tiny_engine, tmp_path_factory):
    """The same inputs without the fault, in this process: the bytes every executor must write (per batch size:
    the settings, batch size included, are recorded in each output's provenance)."""
    root = tmp_path_factory.mktemp("reference")
    src = _inputs(root / "in")
    made: dict[int | str, dict[str, bytes]] = {}

    def outputs(batch: int | str = "auto") -> dict[str, bytes]:
        if batch not in made:
            out = root / f"out-{batch}"
            with torch_threads(1):
                summary = run_batch(discover([str(src)], out).jobs, _settings(tiny_models, batch_size=batch),
                                    output_dir=out, engine=tiny_engine, reporter=Reporter(), handle_signals=False)
            assert (summary.processed, summary.failed) == (4, 0)
            made[batch] = {p.name: p.read_bytes() for p in out.glob("*.png")}
        return made[batch]

    return src, outputs


def _check(summary, out: Path, reference, batch: int | str = "auto") -> None:
    failed = [o for o in summary.outcomes if o.status == "failed"]
    assert [Path(o.input).name for o in failed] == ["b_flat.png"], [(o.input, o.reason) for o in failed]
    assert failed[0].reason == "RuntimeError: flat tile"  # the exception's type and message
    assert summary.failed == 1 and summary.processed == 3 and not summary.stopped  # exit 1, the run went on
    got = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert sorted(got) == ["a.png", "c.png", "d.png"]
    ref = reference[1](batch)
    if batch in ("auto", 1):  # the others: as without the fault, byte for byte
        assert [n for n in got if got[n] != ref[n]] == []
    else:  # the shared batch that raised ran again in smaller batches: CPU kernels sum in another order by batch
        for n in got:  # size (about 1e-5 here), which may move an 8-bit value by one
            a = np.asarray(Image.open(io.BytesIO(got[n])), dtype=np.int16)
            b = np.asarray(Image.open(io.BytesIO(ref[n])), dtype=np.int16)
            assert a.shape == b.shape and int(np.abs(a - b).max()) <= 1, n


@pytest.mark.parametrize("batch", [1, 4])
def test_local_an_engine_error_fails_only_its_image(tiny_models, tiny_engine, reference, tmp_path, batch):
    """Batch 4: the flat image's tiles share engine batches with the others' tiles; the batch that raises is run
    again one image at a time, so only the image that causes the error fails."""
    out = tmp_path / "out"
    heard = _Heard()
    with torch_threads(1):
        summary = run_batch(discover([str(reference[0])], out).jobs, _settings(tiny_models, batch_size=batch),
                            output_dir=out, engine=FlatTileBomb(tiny_engine), reporter=heard, handle_signals=False)
    _check(summary, out, reference, batch)
    tracebacks = [t for t in heard.infos if "Traceback" in t]  # -v: the traceback, naming the file
    assert len(tracebacks) == 1 and "b_flat.png" in tracebacks[0] and "RuntimeError: flat tile" in tracebacks[0]


def test_without_verbose_no_traceback_is_said(tiny_models, tiny_engine, reference, tmp_path):
    out = tmp_path / "out"

    class Plain(_Heard):
        verbose = False

        def info(self, text: str) -> None:  # as PlainReporter: info lines are shown only with -v
            if self.verbose:
                super().info(text)

    heard = Plain()
    with torch_threads(1):
        summary = run_batch(discover([str(reference[0])], out).jobs, _settings(tiny_models), output_dir=out,
                            engine=FlatTileBomb(tiny_engine), reporter=heard, handle_signals=False)
    _check(summary, out, reference)
    assert heard.infos == [] and heard.warnings == []


@pytest.mark.slow
def test_devices_an_engine_error_is_the_image_failure_not_a_worker_death(tiny_models, reference, tmp_path):
    from invsr_cli.run.executors.devices import DevicesExecutor

    out = tmp_path / "out"
    heard = _Heard()
    ex = DevicesExecutor(["cpu", "cpu"], loader=flat_tile_bomb_loader, threads=1)
    summary = run_batch(discover([str(reference[0])], out).jobs, _settings(tiny_models), output_dir=out,
                        executor=ex, reporter=heard, handle_signals=False)
    _check(summary, out, reference)
    assert not [w for w in heard.warnings if "died" in w], heard.warnings  # no worker died, none was restarted
    assert any("Traceback" in t and "b_flat.png" in t for t in heard.infos)  # -v, sent from the worker


def _has_ray() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # with tests/test_ray.py: one local Ray cluster at a time
@pytest.mark.skipif(not _has_ray(), reason="the ray extra is not installed (pip install 'invsr-cli[ray]')")
def test_ray_local_an_engine_error_fails_only_its_image(tiny_models, reference, tmp_path, monkeypatch):
    from invsr_cli.run.executors.ray_data import RayExecutor

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the workers inherit it (2 shared cores)
    out = tmp_path / "out"
    ex = RayExecutor("local", batch_size=2, workers=1, loader=flat_tile_bomb_loader)
    summary = run_batch(discover([str(reference[0])], out).jobs, _settings(tiny_models), output_dir=out,
                        executor=ex, reporter=Reporter(), handle_signals=False)
    _check(summary, out, reference)
