"""`invsr models info`'s table: per source, where it was looked for (once), then each file with its size or
"missing", then one line that says whether the weights are all there and how to get them when not."""

from __future__ import annotations

from itertools import groupby
from typing import Any

__all__ = ["print_models_table"]

_TITLES = {"sd_model": "SD-Turbo", "noise_predictor": "noise predictor"}


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def print_models_table(rows: list[dict[str, Any]]) -> None:
    """Print the rows of :func:`invsr_cli.engine.weights.models_info` for a person."""
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True, highlight=False)
    missing = 0
    for component, group in groupby(rows, key=lambda r: r["component"]):
        group = list(group)
        first = group[0]
        found = all(r["present"] or not r["required"] for r in group)
        console.print(f"{_TITLES.get(component, component)}: {first['spec']}  "
                      f"({'found in' if found else 'looked in'} {first['looked_in']})", markup=False)
        table = Table("file", "size", box=None, padding=(0, 1), show_header=False)
        for r in group:
            if r["present"]:
                state = _size(r["size"] or 0)
            else:
                state = "missing" if r["required"] else "absent (optional)"
                missing += r["required"]
            table.add_row(f"  {r['file']}", state)
        console.print(table)
    if missing:
        console.print(f"{missing} required file(s) missing: run `invsr models download` (online), or pass local "
                      "paths with --sd-model DIR / --noise-predictor FILE", markup=False)
    else:
        console.print("all weights present", markup=False)
