"""`invsr analyse`: read each input as upscale reads it (``--max-input-side`` reduction included; an animation's
first frame), measure its degradations and say which preset `auto` would choose."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from invsr_cli.base.errors import InvSRError, reason_of
from invsr_cli.run.discover import expand_inputs
from invsr_cli.settings.analyse import analyse_image
from invsr_cli.settings.auto_rules import choose
from invsr_cli.settings.settings import DEFAULTS
from invsr_cli.work.inputs import read_input


def analyse_inputs(
    inputs: Sequence[str],
    rules: Any,
    *,
    recursive: bool = False,
    stdin_paths: Sequence[str] | None = None,
    read_settings: Any = DEFAULTS,
) -> list[dict[str, Any]]:
    """`invsr analyse`: per input, the degradation estimates and the preset ``rules`` (an
    :class:`invsr_cli.settings.auto_rules.AutoRules`) choose, or an error. Each input is read with the read-time
    ``read_settings`` (``max_pixels``, ``max_input_side``) as ``invsr upscale`` reads it, so the pixels measured are
    those ``--preset auto`` measures there."""
    found = expand_inputs(inputs, recursive=recursive, stdin_paths=stdin_paths)
    rows: list[dict[str, Any]] = [{"input": spec, "error": reason} for spec, reason in found.errors]
    settings = replace(read_settings, first_frame=True)  # an animation: its first frame, as a still
    for f in found.inputs:
        try:
            loaded, _ = read_input(f.path, settings)
        except InvSRError as e:
            rows.append({"input": str(f.path), "error": reason_of(e, f)})
            continue
        deg = analyse_image(loaded.rgb)
        choice = choose(deg, rules)
        rows.append({"input": str(f.path), **deg.as_dict(), "preset": choice.preset, "reason": choice.reason})
    return rows
