"""Shared fixtures: tiny random-weight models, built once per test session (about a second), and the opt-in switch
for the tests marked ``real_weights``."""

from __future__ import annotations

import os
import threading

import pytest

REAL_WEIGHTS_ENV = "INVSR_REAL_WEIGHTS"


def real_weights_missing() -> list[str]:
    """The files of the default weights (SD-Turbo and the noise predictor) that are not in the Hugging Face
    cache, as ``repo/file``. A cache lookup only (huggingface_hub.try_to_load_from_cache): nothing is downloaded."""
    from huggingface_hub import try_to_load_from_cache

    from invsr_cli.engine.weights import (
        DEFAULT_NP_FILE,
        DEFAULT_NP_REPO,
        DEFAULT_SD_MODEL,
        REQUIRED_HUB_FILES,  # the files the loader itself requires, so this list cannot drift from it
        hub_cache_dir,
    )

    needed = [(DEFAULT_SD_MODEL, f) for f in REQUIRED_HUB_FILES]
    needed.append((DEFAULT_NP_REPO, DEFAULT_NP_FILE))
    cache = hub_cache_dir()
    return [f"{repo}/{name}" for repo, name in needed
            if not isinstance(try_to_load_from_cache(repo, name, cache_dir=cache), str)]


def pytest_collection_modifyitems(config, items):
    """``real_weights`` tests run only with INVSR_REAL_WEIGHTS=1 (``make test-all``), and then only when the
    weights are in the Hugging Face cache; otherwise they are skipped with the reason."""
    marked = [item for item in items if item.get_closest_marker("real_weights")]
    if not marked:
        return
    if os.environ.get(REAL_WEIGHTS_ENV) != "1":
        reason = f"real-weight test: opt-in with {REAL_WEIGHTS_ENV}=1 (make test-all)"
    else:
        from invsr_cli.engine.weights import hub_cache_dir

        missing = real_weights_missing()
        if not missing:
            return
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        reason = (f"real weights not in the Hugging Face cache {hub_cache_dir()}: missing {shown} "
                  "(fetch them with `invsr models download`; tests never download)")
    for item in marked:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def hash_cache(tmp_path_factory):
    """The weights' hash cache (invsr_cli.engine.identity) in a temporary folder, never the user's: for this
    process and the `invsr` processes the tests start. Returns the folder."""
    folder = tmp_path_factory.mktemp("invsr_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INVSR_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A :class:`invsr_cli.engine.testing.TinyModels`: ``sd_dir`` (tiny SD-Turbo-like diffusers folder) and
    ``noise_predictor_path`` (tiny noise predictor .pth, official key layout). Treat the files as read-only."""
    from invsr_cli.engine.testing import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"), seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_models):
    """An InvSREngine on the tiny models (CPU, fp32), shared by the session: do not modify it."""
    from invsr_cli.engine.sampler import InvSREngine

    return InvSREngine.load(tiny_models.sd_dir, tiny_models.noise_predictor_path, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_flags(tiny_models) -> list[str]:
    """The `invsr` flags for the tiny models on the CPU with 32 px tiles (:func:`tests.harness.model_flags`)."""
    from tests.harness import model_flags

    return model_flags(tiny_models)


# -- the pyramid's guard: a test that starts a process is marked slow ---------------------------------------------

_guard: dict = {"item": None, "started": []}


def _guarded(name: str, real):
    def start(*args, **kw):
        # The main thread only: a background thread (a Ray client's, a previous test's) belongs to no one test.
        item = _guard["item"] if threading.current_thread() is threading.main_thread() else None
        if item is not None and item.get_closest_marker("slow") is None:
            _guard["started"].append(name)
            raise RuntimeError(f"{item.nodeid} starts a process ({name}) but is not marked slow: mark it "
                               "@pytest.mark.slow (tests/README.md), so `make test-fast` stays fast")
        return real(*args, **kw)

    return start


def pytest_configure(config):
    """Every way a test can start a process (subprocess, multiprocessing, os.fork) goes through one of these."""
    import _posixsubprocess
    import platform
    import subprocess

    platform.processor()  # runs `uname -p` once and caches it: `invsr bench`'s machine line, in process, asks
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # `make test` runs one worker per core: torch's default pool (a thread per core) in each would oversubscribe
        # the cores and spin, as the harness's OMP_NUM_THREADS=1 avoids for the `invsr` processes
        import torch

        torch.set_num_threads(1)

    mp = pytest.MonkeyPatch()
    mp.setattr(_posixsubprocess, "fork_exec", _guarded("fork_exec", _posixsubprocess.fork_exec))
    if getattr(subprocess, "_fork_exec", None) is not None:  # subprocess's own binding of it (3.11+)
        mp.setattr(subprocess, "_fork_exec", _guarded("subprocess", subprocess._fork_exec))
    for name in ("fork", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            mp.setattr(os, name, _guarded(f"os.{name}", getattr(os, name)))
    config._invsr_process_guard = mp


def pytest_unconfigure(config):
    mp = getattr(config, "_invsr_process_guard", None)
    if mp is not None:
        mp.undo()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Watch the test's set-up (its module- and session-scoped fixtures too), call and tear-down."""
    _guard["item"], _guard["started"] = item, []
    try:
        return (yield)
    finally:
        _guard["item"] = None


@pytest.fixture(autouse=True)
def _no_process_unless_slow(request):
    """Fails a test not marked slow that tried to start a process, even if the code under test swallowed the
    guard's error."""
    yield
    if _guard["started"] and request.node.get_closest_marker("slow") is None:
        pytest.fail(f"starts a process ({', '.join(sorted(set(_guard['started'])))}) but is not marked slow: mark "
                    "it @pytest.mark.slow (tests/README.md)", pytrace=False)
