"""The sampling schedules of METHOD.md and the engine's other option lists, in pure code (no torch), shared by the
settings and the engine: each list has this one owner.

Timesteps are on the 1..1000 scale; the model is evaluated at ``t - 1``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from invsr_cli.base.errors import ConfigError

__all__ = [
    "COLOR_FIXES",
    "DEFAULT_SCHEDULES",
    "DTYPES",
    "MAX_STEPS",
    "NUM_TRAIN_TIMESTEPS",
    "POSTERIORS",
    "default_timesteps",
    "validate_timesteps",
]

NUM_TRAIN_TIMESTEPS = 1000
MAX_STEPS = 5
POSTERIORS = ("sample", "mean")  # draw from the VAE posterior / take its mean
COLOR_FIXES = ("wavelet", "ycbcr", "adain")  # implemented in invsr_cli.engine.colorfix
DTYPES = ("auto", "fp32", "fp16", "bf16")  # resolved in invsr_cli.engine (auto: fp16 on a GPU, fp32 on a CPU)

# The official defaults for --num_steps.
DEFAULT_SCHEDULES: dict[int, tuple[int, ...]] = {
    1: (200,),
    2: (200, 100),
    3: (200, 100, 50),
    4: (200, 150, 100, 50),
    5: (250, 200, 150, 100, 50),
}

def default_timesteps(steps: int) -> tuple[int, ...]:
    """The official schedule for ``steps`` (1..5)."""
    try:
        n = operator.index(steps)
    except TypeError:
        n = None
    if isinstance(steps, bool) or n not in DEFAULT_SCHEDULES:
        raise ConfigError(
            f"`steps` must be an integer from 1 to 5, got {steps!r} (pass `timesteps` for a custom schedule)"
        )
    return DEFAULT_SCHEDULES[n]


def validate_timesteps(timesteps: Sequence[int]) -> tuple[int, ...]:
    """Strictly descending integers in 1..1000; returns them as a tuple of ints."""
    allowed = f"strictly descending integers in 1..{NUM_TRAIN_TIMESTEPS}, e.g. 250,200,150,100,50"
    if isinstance(timesteps, (str, bytes)) or not hasattr(timesteps, "__iter__"):
        raise ConfigError(f"`timesteps` must be {allowed}, got {timesteps!r}")
    out: list[int] = []
    for t in timesteps:
        try:
            if isinstance(t, bool):
                raise TypeError
            value = operator.index(t)
        except TypeError:
            raise ConfigError(f"`timesteps` must be {allowed}; {t!r} is not an integer") from None
        out.append(value)
    if not out:
        raise ConfigError(f"`timesteps` must be {allowed}, got an empty list")
    bad = [t for t in out if not 1 <= t <= NUM_TRAIN_TIMESTEPS]
    if bad:
        raise ConfigError(f"`timesteps` must be {allowed}; out of range: {bad}")
    if any(a <= b for a, b in zip(out, out[1:], strict=False)):
        raise ConfigError(f"`timesteps` must be {allowed}, got {out}")
    return tuple(out)


