"""Shared fixtures: tiny random-weight models, built once per test session (about a second)."""

from __future__ import annotations

import pytest


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
    """A :class:`invsr_cli.testing.TinyModels`: ``sd_dir`` (tiny SD-Turbo-like diffusers folder) and
    ``noise_predictor_path`` (tiny noise predictor .pth, official key layout). Treat the files as read-only."""
    from invsr_cli.testing import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"), seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_models):
    """An InvSREngine on the tiny models (CPU, fp32), shared by the session: do not modify it."""
    from invsr_cli.engine.sampler import InvSREngine

    return InvSREngine.load(tiny_models.sd_dir, tiny_models.noise_predictor_path, device="cpu", dtype="fp32")
