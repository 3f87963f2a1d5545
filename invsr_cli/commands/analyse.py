"""`invsr analyse`: read each input, measure its degradations and say which preset `auto` would choose."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from invsr_cli.base.errors import InvSRError, reason_of
from invsr_cli.imaging.decode import read_image
from invsr_cli.run.discover import expand_inputs
from invsr_cli.settings.analyse import analyse_image
from invsr_cli.settings.auto_rules import choose


def analyse_inputs(
    inputs: Sequence[str],
    rules: Any,
    *,
    recursive: bool = False,
    stdin_paths: Sequence[str] | None = None,
    max_pixels: int | None = None,
) -> list[dict[str, Any]]:
    """`invsr analyse`: per input, the degradation estimates and the preset ``rules`` (an
    :class:`invsr_cli.settings.auto_rules.AutoRules`) choose, or an error."""
    found = expand_inputs(inputs, recursive=recursive, stdin_paths=stdin_paths)
    rows: list[dict[str, Any]] = [{"input": spec, "error": reason} for spec, reason in found.errors]
    for f in found.inputs:
        try:
            loaded = read_image(f.path, max_pixels=max_pixels)
        except InvSRError as e:
            rows.append({"input": str(f.path), "error": reason_of(e, f)})
            continue
        deg = analyse_image(loaded.rgb)
        choice = choose(deg, rules)
        rows.append({"input": str(f.path), **deg.as_dict(), "preset": choice.preset, "reason": choice.reason})
    return rows
