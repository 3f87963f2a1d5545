"""`invsr degrade` and `invsr eval`: parse, make one library call (:mod:`invsr_cli.evaluation`), print, exit code.

Registered on the app by :func:`register` (one line in ``commands/cli.py``). Heavy modules load inside the commands.
Exit codes: 0 all done; 1 some inputs failed; 2 usage; 3 weights; 130 Ctrl-C (``eval`` prints the partial table).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from invsr_cli.base.errors import ConfigError

PROFILE_HELP = "Degradation: training, testing (the paper's synthetic test set) or bicubic."
SIZE_HELP = "HR side: short side resized to it (area), centre crop; smaller photos are refused."
SEED_HELP = "Seed; with each file's relative path it fixes its LR bit for bit."


def _split_ints(values: list[str] | None, what: str) -> list[int]:
    out: list[int] = []
    for v in values or []:
        for part in v.split(","):
            try:
                out.append(int(part))
            except ValueError:
                raise ConfigError(f"`{what}` takes integers separated by commas, got {v!r}") from None
    return out


def _split(values: list[str] | None) -> list[str]:
    return [p.strip() for v in values or [] for p in v.split(",") if p.strip()]


def _fmt(v: float | None, digits: int) -> str:
    if v is None:
        return "n/a"
    return "inf" if math.isinf(v) else f"{v:.{digits}f}"


def print_table(result: Any, out: Any = None) -> None:
    """The paper's Table 1 shape: one row per configuration, the mean of each metric (the best marked *)."""
    from rich.console import Console
    from rich.table import Table

    table = Table("configuration", "images", "PSNR (dB) ↑", "SSIM ↑", "LPIPS ↓", "s/image", box=None)
    for row in result.summary():
        def cell(name: str, digits: int, row: dict[str, Any] = row) -> str:
            return _fmt(row[name], digits) + (" *" if name in row["best"] else "")

        table.add_row(row["config"], str(row["images"]), cell("psnr", 2), cell("ssim", 4), cell("lpips", 4),
                      _fmt(row["seconds_per_image"], 2))
    console = Console(file=out or sys.stdout, soft_wrap=True, width=160)
    console.print(table)
    for line in notes(result):
        console.print(line, highlight=False)


def notes(result: Any) -> list[str]:
    """The lines under the table: the legend, the auto agreement, what is missing, the failures."""
    lines = ["* best in its column (mean over the images; Y channel, BT.601, no border crop)"]
    agreement = result.auto_agreement()
    if agreement:
        by_auto: dict[str, list[str]] = {}
        for key, v in agreement.items():
            label, metric = key.rsplit(":", 1)
            by_auto.setdefault(label, []).append(f"{metric.upper()} {v['agree']}/{v['images']}")
        for label, parts in by_auto.items():
            lines.append(f"{label}: picked the best of the presets in the table on " + ", ".join(parts) + " images")
    if result.lpips != "ok":
        lines.append(f"LPIPS not scored: {result.lpips}")
    if result.interrupted:
        lines.append("interrupted: partial results")
    for f in result.failures:
        lines.append(f"failed: {f.reason}")
    return lines


def _write_csv(path: str, result: Any) -> None:
    import csv
    import io

    from invsr_cli.base.atomic import atomic_write_bytes

    buf = io.StringIO()
    fields = ["image", "config", "preset", "psnr", "ssim", "lpips", "seconds"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in fields})
    atomic_write_bytes(path, buf.getvalue().encode())


def register(app: typer.Typer, read_stdin: Callable[[bool], list[str]]) -> None:
    """Add ``degrade`` and ``eval`` to ``app`` (``read_stdin``: the CLI's reader of ``-`` path lists)."""

    @app.command(epilog="Examples:\n\n  invsr degrade photos/ testset/ --profile testing --size 512 --seed 0\n\n"
                 "  invsr degrade -r shots/ pairs/ --profile training --json")
    def degrade(
        paths: Annotated[list[str], typer.Argument(help="HR files, folders, globs or - (stdin), then OUT_DIR.",
                                                   show_default=False, metavar="HR... OUT_DIR")],
        profile: Annotated[str, typer.Option("--profile", help=PROFILE_HELP)] = "testing",
        size: Annotated[int, typer.Option("--size", help=SIZE_HELP)] = 512,
        seed: Annotated[int, typer.Option("--seed", help=SEED_HELP)] = 0,
        recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Descend into sub-folders.")] = False,
        null: Annotated[bool, typer.Option("-0", "--null", help="Paths on stdin are NUL-separated.")] = False,
        json_output: Annotated[bool, typer.Option("--json", help="One JSON object per pair.")] = False,
    ) -> None:
        """Make HR/LR test pairs (OUT_DIR/hr/, OUT_DIR/lr/, PNG) with the Real-ESRGAN degradations, and a manifest
        line per pair (OUT_DIR/degrade.jsonl) with every sampled parameter."""
        from invsr_cli.evaluation.pairs import run_degrade
        from invsr_cli.quality.degrade import PROFILES

        if len(paths) < 2:
            raise ConfigError("give at least one HR input and the output folder")
        if profile not in PROFILES:
            raise ConfigError(f"`--profile` must be one of {', '.join(PROFILES)}; got {profile!r}")
        *inputs, out_dir = paths
        stdin_paths = read_stdin(null) if "-" in inputs else None

        def show(r: dict[str, Any]) -> None:
            if json_output:
                typer.echo(json.dumps(r, ensure_ascii=False))
            elif r.get("error"):
                typer.echo(f"failed: {r['error']}", err=True)
            else:
                typer.echo(f"{r['input']} -> {r['hr']}, {r['lr']}")

        records = run_degrade(inputs, out_dir, profile=profile, size=size, seed=seed, recursive=recursive,
                              stdin_paths=stdin_paths, on_record=show)
        failed = sum(1 for r in records if r.get("error"))
        if not json_output:
            typer.echo(f"{len(records) - failed} pairs written, {failed} failed", err=bool(failed))
        raise typer.Exit(1 if failed or not records else 0)

    @app.command("eval", epilog="Examples:\n\n  invsr eval photos/ --preset default,fidelity,auto --steps 1,3,5\n\n"
                 "  invsr eval --pairs testset/ --timesteps 250,150,50 --noise-predictor v5,v5_diftune --csv t.csv\n\n"
                 "  invsr eval photos/ --preset auto,default,noisy,blur --json > table.json")
    def eval_(
        paths: Annotated[list[str] | None, typer.Argument(help="HR files, folders, globs or - (stdin).",
                                                          show_default=False, metavar="[HR...]")] = None,
        pairs: Annotated[str | None, typer.Option("--pairs", help="A folder with hr/ and lr/ (as degrade writes) "
                                                  "instead of HR inputs.")] = None,
        preset: Annotated[list[str] | None, typer.Option("--preset", "-p", help="Presets to compare, comma-"
                                                         "separated or repeated (auto included).")] = None,
        steps: Annotated[list[str] | None, typer.Option("--steps", help="Step counts, e.g. 1,3,5: one "
                                                        "configuration each.")] = None,
        timesteps: Annotated[list[str] | None, typer.Option("--timesteps", help="A schedule, e.g. 250,150,50; "
                                                            "repeat for more.")] = None,
        noise_predictor: Annotated[list[str] | None, typer.Option(
            "--noise-predictor", help="v5, v5_diftune, REPO:FILE or a file; comma-separated or repeated.")] = None,
        profile: Annotated[str, typer.Option("--profile", help=PROFILE_HELP)] = "testing",
        size: Annotated[int, typer.Option("--size", help=SIZE_HELP)] = 512,
        seed: Annotated[int, typer.Option("--seed", help=SEED_HELP)] = 0,
        recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Descend into sub-folders.")] = False,
        null: Annotated[bool, typer.Option("-0", "--null", help="Paths on stdin are NUL-separated.")] = False,
        sd_model: Annotated[str | None, typer.Option("--sd-model", help="Hub id or local folder.")] = None,
        device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = None,
        dtype: Annotated[str | None, typer.Option("--dtype", help="auto, fp32, fp16 or bf16.")] = None,
        tile: Annotated[int | None, typer.Option("--tile", help="Engine LR tile size (as upscale).")] = None,
        overlap: Annotated[int | None, typer.Option("--overlap", help="Tile overlap in LR px (as upscale).")] = None,
        no_lpips: Annotated[bool, typer.Option("--no-lpips", help="Score PSNR and SSIM only.")] = False,
        json_output: Annotated[bool, typer.Option("--json", help="The table and every image's values as one "
                                                  "JSON object.")] = False,
        csv_path: Annotated[str | None, typer.Option("--csv", help="Write every image's values to this CSV "
                                                     "file.")] = None,
        report: Annotated[str | None, typer.Option("--report", help="Write an HTML page: the table, a chart per "
                                                   "metric, each image's HR, LR and outputs with zoomed crops.")] = None,
    ) -> None:
        """Score presets, step counts, schedules and noise predictors on your own photos (PSNR, SSIM, LPIPS), as
        the paper's Table 1: HR photos are degraded on the fly (or --pairs are read) and upscaled with the same
        engine, tiles and batches as upscale, one model load per noise predictor."""
        from invsr_cli.evaluation.evaluate import build_configs, lpips_or_reason, run_eval
        from invsr_cli.evaluation.pairs import read_pairs, source_pairs
        from invsr_cli.quality.degrade import PROFILES

        paths = paths or []
        if bool(paths) == bool(pairs):
            raise ConfigError("give HR inputs or --pairs DIR (one of the two)")
        if profile not in PROFILES:
            raise ConfigError(f"`--profile` must be one of {', '.join(PROFILES)}; got {profile!r}")
        configs = build_configs(_split(preset) or ["default"], _split_ints(steps, "--steps"),
                                [_split_ints([t], "--timesteps") for t in timesteps or []],
                                _split(noise_predictor))
        flags = {"sd_model": sd_model, "device": device, "dtype": dtype, "tile": tile, "overlap": overlap}
        stdin_paths = read_stdin(null) if "-" in paths else None

        def source() -> Any:  # made again for each noise predictor (deterministic), never all held
            if pairs:
                return read_pairs(pairs)
            return source_pairs(paths, profile=profile, size=size, seed=seed, recursive=recursive,
                                stdin_paths=stdin_paths)

        if no_lpips:
            lpips_model, note = None, "--no-lpips"
        else:
            from invsr_cli.engine.devices import resolve_device

            lpips_model, note = lpips_or_reason(resolve_device(device or "auto"))

        def load(np_spec: str | None) -> Any:
            from invsr_cli.engine import DEFAULT_SD_MODEL
            from invsr_cli.engine.start import load_engine

            return load_engine(sd_model or DEFAULT_SD_MODEL, np_spec, device=device or "auto",
                               dtype=dtype or "auto")

        def progress(row: dict[str, Any]) -> None:  # stderr: stdout holds only the table (or the JSON)
            typer.echo(f"{row['image']} [{row['config']}]: PSNR {_fmt(row['psnr'], 2)} SSIM {_fmt(row['ssim'], 4)} "
                       f"LPIPS {_fmt(row['lpips'], 4)}", err=True)

        page = None
        if report:
            from invsr_cli.commands.htmlreport import EvalReport

            page = EvalReport(report)

        def keep(pair: Any, config: Any, out8: Any, row: dict[str, Any]) -> None:
            page.add(str(pair.rel), pair.hr, pair.lr, config.label, out8, row)

        result = run_eval(source, configs, flags=flags, load_engine=load, lpips_model=lpips_model,
                          lpips_note=note, on_row=progress, on_output=keep if page else None)
        if csv_path:
            _write_csv(csv_path, result)
        if page is not None:
            page.finish(result.summary(), notes(result))
        if json_output:
            typer.echo(json.dumps(result.to_dict(), ensure_ascii=False, allow_nan=True))
        else:
            print_table(result)
        if result.interrupted:
            raise typer.Exit(130)
        raise typer.Exit(1 if result.failures or not result.rows else 0)
