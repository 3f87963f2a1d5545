"""Starting an engine for a batch run: quiet the libraries, keep freed memory on a CPU, load the models."""

from __future__ import annotations

from typing import Any

__all__ = ["load_engine", "quiet_libraries"]


def load_engine(sd_model: str, noise_predictor: str | None, *, device: str = "auto", dtype: str = "auto",
                vae_fp32: bool = False, compile: bool = False) -> Any:
    """An :class:`~invsr_cli.engine.sampler.InvSREngine` for a batch run (weights from the HF cache or local
    paths); ``engine.load_seconds`` says how long the load took and ``engine.identity`` which weights it holds."""
    from invsr_cli.engine.devices import resolve_device
    from invsr_cli.engine.malloc import keep_freed_memory
    from invsr_cli.engine.sampler import InvSREngine

    quiet_libraries()
    if resolve_device(device).type == "cpu":
        keep_freed_memory()  # before loading, so the weights come from the heap too; see invsr_cli/engine/malloc.py
    return InvSREngine.load(sd_model, noise_predictor, device=device, dtype=dtype, vae_fp32=vae_fp32,
                            compile=compile)


def quiet_libraries() -> None:
    """diffusers and transformers print progress bars (with carriage returns) and advice while loading; a
    batch tool's output is its own, and cron logs must hold no control characters. Errors still surface as
    exceptions, which the CLI reports."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    for lib in (dlog, tlog):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
