"""`--ray`: the Ray Data executor (issue 11 items 3-5), on real local Ray clusters with the tiny random models.

One local cluster per module (2 CPUs, two FAKE GPUs: ``ray.init(num_gpus=2)`` on a CPU machine), so the executor
plans GPU workers (``num_gpus=1`` each) and each worker must see its own GPU id while computing on the CPU. The
multi-node test starts its own ``ray.cluster_utils.Cluster`` after that cluster is shut down. Everything is skipped
only when the ``ray`` extra is absent (``.ci/run`` installs it); the missing-extra exit-2 test runs regardless.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from invsr_cli.run.discover import discover
from invsr_cli.run.executors import RunContext
from invsr_cli.run.manifest import MANIFEST_NAME
from invsr_cli.run.runner import run_batch
from invsr_cli.settings.settings import FixedPolicy, resolve_settings
from invsr_cli.work.process import ImageTask
from invsr_cli.work.report import Reporter
from tests import imagegen
from tests.faults import flat_tile_bomb_loader
from tests.harness import invsr, invsr_popen, manifest_records, model_flags, subprocess_env, tiny_settings
from tests.threads import torch_threads

ROOT = Path(__file__).resolve().parents[1]

# Under `make test` (pytest-xdist, --dist loadgroup) these run on one worker: one local Ray cluster at a time.
pytestmark = pytest.mark.xdist_group("ray")


def _env(extra=None) -> dict[str, str]:
    """The harness's environment with no Ray cluster to join and this source tree importable by Ray's workers."""
    env = subprocess_env({"RAY_ADDRESS": "", **(extra or {})})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def _has_ray() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


needs_ray = pytest.mark.skipif(not _has_ray(), reason="the ray extra is not installed (pip install 'invsr-cli[ray]')")


def _settings(tiny_models, **flags):
    return tiny_settings(tiny_models, **{"dtype": "fp32", **flags})


def _inputs(folder: Path, n: int = 6) -> Path:
    """``n`` images of varied sizes (one or several tiles), an RGBA one, and a corrupt file."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        imagegen.rgb(folder / f"img{i}.png", w=24 + 12 * (i % 3), h=20 + 8 * (i % 2), seed=i)
    imagegen.rgba(folder / "alpha.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def _manifest(out: Path) -> list[dict]:
    assert (out / MANIFEST_NAME).is_file()
    return manifest_records(out, strict=True)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.name.startswith(".")}


class _Quiet(Reporter):
    def warning(self, text: str) -> None:
        pass


@pytest.fixture(scope="module")
def fake_gpu_cluster():
    """A local cluster with 2 CPUs and 2 fake GPUs, shared by the module's in-process tests."""
    if not _has_ray():
        pytest.skip("the ray extra is not installed")
    import ray

    from invsr_cli.run.executors.ray_data import LOCAL_OBJECT_STORE

    os.environ["OMP_NUM_THREADS"] = "1"  # the workers inherit it (2 shared cores)
    start = time.perf_counter()
    ray.init(num_cpus=2, num_gpus=2, object_store_memory=LOCAL_OBJECT_STORE, include_dashboard=False,
             log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - start:.1f} s")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def single_process(tiny_models, tmp_path_factory):
    """The reference: the same inputs and settings run in this process (no Ray)."""
    from invsr_cli.engine.sampler import InvSREngine

    root = tmp_path_factory.mktemp("single")
    inp = _inputs(root / "in")
    out = root / "out"
    engine = InvSREngine.load(tiny_models.sd_dir, tiny_models.noise_predictor_path, device="cpu", dtype="fp32")
    found = discover([str(inp)], out)
    with torch_threads(1):  # as each Ray worker (one CPU each): tests/threads.py says why it matters
        summary = run_batch(found.jobs, _settings(tiny_models), output_dir=out, reporter=_Quiet(), engine=engine,
                            handle_signals=False)
    assert (summary.processed, summary.failed) == (7, 1)
    return inp, out


@needs_ray
@pytest.mark.slow
def test_ray_writes_the_same_bytes_and_every_input_ends_in_exactly_one_record(fake_gpu_cluster, tiny_models,
                                                                              single_process, tmp_path):
    """One run on the module's cluster (2 fake GPUs, settings `device: auto`): GPU workers are planned, each
    is given one of the fake GPUs and computes on the CPU, and the outputs are those of the single-process run,
    byte for byte, with exactly one manifest record per input."""
    import torch

    from invsr_cli.run.executors.ray_data import RayExecutor

    ray = fake_gpu_cluster
    inp, ref = single_process
    out = tmp_path / "out"
    found = discover([str(inp)], out)
    settings = _settings(tiny_models, device="auto")
    ex = RayExecutor("local", batch_size=2)  # Ray is initialised already: the module's cluster is used
    assert ray.cluster_resources().get("GPU") == 2
    assert ex.plan(ray, FixedPolicy(settings), len(found.jobs)) == {
        "size": 2, "blocks": 4, "resources": {"num_cpus": 1.0, "num_gpus": 1}}
    assert ex.plan(ray, FixedPolicy(_settings(tiny_models)), len(found.jobs)) == {  # --device cpu: CPU workers
        "size": 2, "blocks": 4, "resources": {"num_cpus": 1.0}}
    summary = run_batch(found.jobs, settings, output_dir=out, reporter=_Quiet(), executor=ex, handle_signals=False)

    assert (summary.processed, summary.failed, summary.skipped) == (7, 1, 0)
    assert _files(out) == _files(ref)  # byte-identical to the single-process run
    records = _manifest(out)
    assert Counter(r["input"] for r in records) == Counter(str(j.input) for j in found.jobs)  # exactly once each
    broken = [r for r in records if r["status"] == "failed"]
    assert [Path(r["input"]).name for r in broken] == ["broken.png"]
    assert "not a supported image" in broken[0]["reason"]  # a bad file is a failed row, not a failed block
    assert all(r["settings"]["tile"] == 32 and r["fingerprint"] for r in records if r["status"] == "done")
    local = {r["input"]: r for r in _manifest(ref)}
    for r in records:  # the same weights' identity and fingerprint as the single-process run records
        assert (r.get("models"), r["fingerprint"]) == (local[r["input"]].get("models"), local[r["input"]]["fingerprint"])
    assert ex.duplicates == 0
    assert not [p for p in os.listdir(out) if p.endswith(".invsr-tmp")]

    workers = [json.loads(w) for w in ex.workers_seen]
    assert workers
    for w in workers:  # each worker was given exactly one of the two fake GPUs by Ray ...
        assert len(w["gpu_ids"]) == 1 and w["gpu_ids"][0] in ("0", "1"), w
        # ... and, with no CUDA here, computes on the CPU (on a real GPU node: the GPU Ray gave it)
        assert w["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu"), w
    if len(workers) == 2:
        assert {w["gpu_ids"][0] for w in workers} == {"0", "1"}  # two workers never share a GPU


@needs_ray
@pytest.mark.slow
def test_ray_spreads_one_video_over_the_workers_and_the_driver_joins_it(fake_gpu_cluster, tiny_models, tmp_path):
    """A video's segments are Ray rows (their frames' timestamps as JSON, never pixels); the workers write the
    segment files, the driver joins them: the decoded frames equal a single-process run's exactly (--crf 0: x264
    is lossless on the frames it is given) and each segment has one manifest line."""
    pytest.importorskip("av")
    from invsr_cli.engine.sampler import InvSREngine
    from invsr_cli.imaging import video as V
    from invsr_cli.run.executors.ray_data import RayExecutor
    from tests.videogen import make_video

    (tmp_path / "in").mkdir()
    make_video(tmp_path / "in" / "clip.mp4", frames=12, fps=12, gop=3, width=32, height=32)
    settings = _settings(tiny_models, segment_seconds=0.25, crf=0)
    outs = {}
    for name, kw in (("ray", {"executor": RayExecutor("local", batch_size=1)}),
                     ("one", {"engine": InvSREngine.load(tiny_models.sd_dir, tiny_models.noise_predictor_path,
                                                         device="cpu", dtype="fp32")})):
        out = outs[name] = tmp_path / name
        with torch_threads(1):
            summary = run_batch(discover([str(tmp_path / "in")], out).jobs, settings, output_dir=out,
                                reporter=_Quiet(), handle_signals=False, **kw)
        assert (summary.processed, summary.failed) == (1, 0)
    segments = [r for r in _manifest(outs["ray"]) if "video" in r]
    assert sorted(r["segment"] for r in segments) == [0, 1, 2, 3] and all(r["status"] == "done" for r in segments)
    a, b = ([f.rgb for f in V.iter_frames(V.probe(o / "clip.mp4"))] for o in outs.values())
    assert len(a) == len(b) == 12 and all((x == y).all() for x, y in zip(a, b, strict=True))


@needs_ray
@pytest.mark.slow
def test_an_error_outside_the_per_file_handling_fails_only_its_image(fake_gpu_cluster, tiny_models,
                                                                     single_process, tmp_path):
    """An unexpected exception (here: the engine raising a plain RuntimeError on one image's tiles) fails that
    image only; its block's other images are done (process_images pins it, as for every executor)."""
    from invsr_cli.run.executors.ray_data import RayExecutor

    inp, ref = single_process
    out = tmp_path / "out"
    flat = inp.parent / "flat"
    flat.mkdir(exist_ok=True)
    shutil.copy(inp / "img0.png", flat / "img0.png")
    from PIL import Image

    Image.new("RGB", (24, 20), (90, 90, 90)).save(flat / "zflat.png")
    imagegen.rgb(flat / "zz.png", seed=3)
    found = discover([str(flat)], out)
    ex = RayExecutor("local", batch_size=3, workers=1, loader=flat_tile_bomb_loader)
    summary = run_batch(found.jobs, _settings(tiny_models), output_dir=out, reporter=_Quiet(), executor=ex,
                        handle_signals=False)
    failed = [o for o in summary.outcomes if o.status == "failed"]
    assert [Path(o.input).name for o in failed] == ["zflat.png"]
    assert "RuntimeError: flat tile" in failed[0].reason
    assert summary.processed == 2
    assert (out / "img0.png").read_bytes() == (ref / "img0.png").read_bytes()


@needs_ray
@pytest.mark.slow
def test_weights_a_worker_cannot_load_raise_as_themselves(fake_gpu_cluster, tiny_models, tmp_path):
    """An engine that cannot load in the workers ends the run with the loader's own error (exit 3 in the CLI), not
    Ray's ActorDiedError wrapping it."""
    from invsr_cli.base.errors import WeightsUnavailableError
    from invsr_cli.run.executors.ray_data import RayExecutor

    imagegen.rgb(tmp_path / "a.png")
    found = discover([str(tmp_path / "a.png")], tmp_path / "out")
    settings = _settings(tiny_models, sd_model=str(tmp_path / "no-such-model"))
    ex = RayExecutor("local", workers=1)
    with pytest.raises(WeightsUnavailableError, match="no-such-model"):
        run_batch(found.jobs, settings, output_dir=tmp_path / "out", reporter=_Quiet(), executor=ex,
                  handle_signals=False)
    assert ex.startup_seconds is not None and ex.first_row_seconds is None  # it came from a worker, not the driver


@needs_ray
@pytest.mark.slow
def test_a_node_removed_mid_run_still_yields_every_image_exactly_once(fake_gpu_cluster, tiny_models,
                                                                      single_process, tmp_path):
    """Head (1 CPU) + a worker node (1 CPU), one actor on each; the worker node is removed after the first row.
    Ray restarts the lost actor and retries its tasks; the run still ends with every image exactly once, and the
    same bytes as the single-process run."""
    ray = fake_gpu_cluster
    ray.shutdown()  # this test needs its own multi-node cluster; the module's is not used after it
    from ray.cluster_utils import Cluster

    from invsr_cli.run.executors.ray_data import RayExecutor

    inp, ref = single_process
    store = 80 * 2**20
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store,
                                                            "include_dashboard": False})
    try:
        worker_node = cluster.add_node(num_cpus=1, object_store_memory=store)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        out = tmp_path / "out"
        found = discover([str(inp)], out)
        tasks = [ImageTask(j, i) for i, j in enumerate(found.jobs)]
        ex = RayExecutor("auto", batch_size=1, workers=2)
        outcomes, removed_with_actor = [], None
        for o in ex.run(tasks, FixedPolicy(_settings(tiny_models)), RunContext(_Quiet())):
            outcomes.append(o)
            if len(outcomes) == 1:
                # Both CPUs held means an actor sits on the worker node (the head has one CPU).
                removed_with_actor = ray.available_resources().get("CPU", 0) == 0
                cluster.remove_node(worker_node)
        assert removed_with_actor, "no actor was on the removed node: the test proved nothing"
        assert Counter(o.input for o in outcomes) == Counter(str(j.input) for j in found.jobs)
        assert Counter(o.status for o in outcomes) == {"done": 7, "failed": 1}
        assert _files(out) == _files(ref)
        assert not [p for p in os.listdir(out) if p.endswith(".invsr-tmp")]
    finally:
        ray.shutdown()
        cluster.shutdown()


@needs_ray
def test_the_driver_records_the_first_row_per_output_and_stops_after_a_full_disk(tmp_path):
    """The driver's side alone, on rows as a worker makes them: a retried block's repeated row is dropped (counted),
    warnings are passed on, and after a row saying the disk is full every image without a row is "not attempted"
    (as in a local run), so each input still ends in exactly one record."""
    from pathlib import PurePosixPath

    from invsr_cli.run.executors.ray_data import RayExecutor
    from invsr_cli.work.job import Job
    from invsr_cli.work.report import Outcome

    s = resolve_settings(None, {"tile": 64, "overlap": 16})
    jobs = [Job(tmp_path / f"{n}.png", tmp_path / "out" / f"{n}.png", PurePosixPath(f"{n}.png"), "png")
            for n in "abcd"]

    def row(job, status, *, stopped="", warnings=(), call=-1.0):
        o = Outcome(str(job.input), str(job.output), status, tiles=2, timesteps=s.timesteps, settings=s)
        return {"input": o.input, "output": o.output, "status": status,
                "record": json.dumps({**o.to_dict(), "settings": s.to_dict()}), "worker": json.dumps({"pid": 1}),
                "warnings": json.dumps(list(warnings)), "stopped": stopped, "call_seconds": call}

    a, b, c, d = jobs
    rows = [row(a, "done", warnings=["out of memory at batch 2"], call=1.5), row(b, "done"),
            row(a, "done", call=1.5), row(c, "failed", stopped="disk full or I/O error writing c.png"),
            row(d, "done")]

    class Heard(Reporter):
        said: list = []

        def warning(self, text):
            self.said.append(text)

    ex = RayExecutor("local")
    got = list(ex.consume(iter(rows), [ImageTask(j, i) for i, j in enumerate(jobs)], RunContext(Heard()), 0.0))
    assert [(Path(o.input).stem, o.status) for o in got] == [("a", "done"), ("b", "done"), ("c", "failed"),
                                                             ("d", "failed")]
    assert got[-1].reason == "not attempted: disk full or I/O error writing c.png"
    assert ex.duplicates == 1 and ex.stopped == "disk full or I/O error writing c.png"
    assert got[0].settings == s and got[0].timesteps == s.timesteps  # the settings the manifest records
    assert Heard.said == ["out of memory at batch 2"]
    assert [(n, round(sec, 1)) for _, sec, n in ex.calls] == [(2, 1.5), (2, 1.5)]


def test_every_policy_pickles_for_the_workers():
    """The policy reaches the workers through `fn_constructor_kwargs` (pickled): the auto preset's too."""
    import pickle

    from invsr_cli.settings.preset_files import load_policy

    for name in ("default", "auto"):
        policy = load_policy(name, {"tile": 64})
        back = pickle.loads(pickle.dumps(policy))
        assert back == policy and back.fingerprint() == policy.fingerprint()


@needs_ray
def test_an_address_where_nothing_listens_fails_fast_and_names_it(tmp_path):
    """Ray itself waits minutes for a GCS that is not there; the executor says so at once."""
    import socket

    import ray

    ray.shutdown()  # the module's cluster (if a test above started it) would be used whatever the address

    from invsr_cli.base.errors import ConfigError
    from invsr_cli.run.executors.ray_data import RayExecutor, RayRunError

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    imagegen.rgb(tmp_path / "a.png")
    tasks = [ImageTask(j, 0) for j in discover([str(tmp_path / "a.png")], tmp_path / "out").jobs]
    start = time.perf_counter()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(RayRunError, match=f"--ray {address}: cannot reach a Ray cluster there"):
            list(RayExecutor(address).run(tasks, FixedPolicy(resolve_settings()), RunContext(_Quiet())))
    assert time.perf_counter() - start < 10
    with pytest.raises(ConfigError, match="HOST:PORT"):
        list(RayExecutor("headnode").run(tasks, FixedPolicy(resolve_settings()), RunContext(_Quiet())))


# -- the real executable ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_missing_extra_exits_2_with_the_install_line(tmp_path):
    """Ray made unimportable by a `ray` module on PYTHONPATH that raises ImportError, as when it is absent."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "ray.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    (tmp_path / "in").mkdir()
    imagegen.rgb(tmp_path / "in" / "a.png")
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join((str(shim), env["PYTHONPATH"]))
    p = invsr(["upscale", tmp_path / "in", tmp_path / "out", "--ray", "local"], environ=env, timeout=120)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert "pip install 'invsr-cli[ray]'" in err
    assert not (tmp_path / "out").exists()


def _ray_local_run(tiny_models, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """16 small inputs, and the `invsr upscale --ray local --json` command line over them: (input folder, output folder, args)."""
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(16):
        imagegen.rgb(inp / f"img{i:02d}.png", w=48, h=40, seed=i)
    out = tmp_path / "out"
    return inp, out, ["upscale", inp, out, "--ray", "local", "--json", *model_flags(tiny_models), "--dtype", "fp32"]


@needs_ray
@pytest.mark.slow
def test_driver_killed_then_rerun_computes_only_what_is_missing(tiny_models, tmp_path):
    """`invsr upscale --ray local` killed (SIGKILL) after its first images; the re-run skips what the manifest
    records as done and computes only the rest, each input ending done exactly once across the two runs."""
    inp, out, args = _ray_local_run(tiny_models, tmp_path)
    first = invsr_popen(args, environ=_env(), start_new_session=True)
    done_first = []
    try:
        for line in first.stdout:
            rec = json.loads(line)
            if rec.get("status") == "done":
                done_first.append(rec["input"])
                if len(done_first) == 2:
                    break
    finally:
        _kill_tree(first.pid)  # the driver and the local cluster it started (raylet, GCS, workers), at once
        first.wait(timeout=60)
    # The kill may fall between an image's JSON line and its manifest line: that output is complete (atomic
    # writes) but unrecorded, and the re-run keeps it as "output exists". Either way it is not computed again.
    recorded = {r["input"] for r in _manifest(out) if r["status"] == "done"}
    kept = {str(inp / p.name) for p in out.iterdir() if not p.name.startswith(".")}
    assert set(done_first[:1]) <= recorded <= kept and len(kept) < 16

    second = invsr(args, environ=_env(), timeout=300)
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    rows = [json.loads(line) for line in second.stdout.decode().splitlines()]
    images = [r for r in rows if r.get("type") == "image"]
    assert {r["input"] for r in images if r["status"] == "skipped"} == kept
    computed = [r["input"] for r in images if r["status"] == "done"]
    assert sorted(computed) == sorted(str(p) for p in inp.iterdir() if str(p) not in kept)  # each once
    assert not [p for p in os.listdir(out) if p.endswith(".invsr-tmp")]
    for p in inp.iterdir():
        with __import__("PIL.Image").Image.open(out / p.name) as im:
            assert im.size == (192, 160)


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process descended from it (found through /proc), all at once: a crash of the
    driver's machine, as far as its own processes go. Ray's workers may leave the driver's process group."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@needs_ray
@pytest.mark.slow
def test_sigterm_stops_after_the_rows_in_flight_and_shuts_the_local_cluster_down(tiny_models, tmp_path):
    """SIGTERM to `invsr upscale --ray local`: exit 143, every recorded image recorded once, every output
    complete, no temporary files, and the local cluster's processes gone with the driver."""
    _, out, args = _ray_local_run(tiny_models, tmp_path)
    p = invsr_popen(args, environ=_env(), start_new_session=True)
    lines = []
    for line in p.stdout:
        lines.append(json.loads(line))
        if lines[-1].get("status") == "done":
            p.send_signal(signal.SIGTERM)
            break
    rest, err = p.communicate(timeout=120)
    lines += [json.loads(line) for line in rest.decode().splitlines()]
    assert p.returncode == 143, err.decode()[-2000:]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["interrupted"] == "SIGTERM"
    records = _manifest(out)
    assert Counter(r["input"] for r in records).most_common(1)[0][1] == 1
    assert summary["processed"] == len(records) < 16
    assert not [q for q in os.listdir(out) if q.endswith(".invsr-tmp")]
    for q in out.iterdir():
        if not q.name.startswith("."):
            with __import__("PIL.Image").Image.open(q) as im:
                im.load()
    # ray.shutdown() ended the local cluster: nothing of this session is left (its processes may take a few
    # seconds to exit on a loaded machine; they must be gone within 30 s)
    deadline = time.monotonic() + 30
    while _session_processes(p.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _session_processes(p.pid)


def _session_processes(sid: int) -> list[str]:
    """Live processes of the session ``sid`` (the driver started a new one; Ray's local cluster inherits it)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # fields: state, ppid, pgrp, session
                found.append(entry)
    return found


@pytest.mark.slow
def test_devices_and_ray_together_are_refused_before_any_work(tmp_path):
    (tmp_path / "in").mkdir()
    imagegen.rgb(tmp_path / "in" / "a.png")
    p = invsr(["upscale", tmp_path / "in", tmp_path / "out", "--ray", "local", "--devices", "cpu,cpu"],
              environ=_env(), timeout=120)
    assert p.returncode == 2 and "--devices and --ray both given" in p.stderr.decode(), p.stderr.decode()
    assert not (tmp_path / "out").exists()
