"""The `invsr` command line. It parses, resolves settings, makes one library call, and maps exceptions and
outcomes to exit codes in one place (``main``). Heavy modules are imported inside the commands, so
``invsr --help`` stays instant.

Exit codes: 0 all done or skipped; 1 some inputs failed (or the run stopped early); 2 usage or configuration
error; 3 weights unavailable; 75 another run holds the output folder; 130 SIGINT; 143 SIGTERM (``watch``: 0, a
clean stop).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from invsr_cli.base.errors import ConfigError, InvSRError
from invsr_cli.base.version import __version__

# The library's errors carry their own exit codes (errors.py); these are the outcomes the CLI decides itself.
EXIT_OK, EXIT_FAILED = 0, 1
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}

app = typer.Typer(
    name="invsr",
    help="Batch x4 image super-resolution with InvSR (diffusion inversion, 1-5 steps on SD-Turbo).\n\n"
    "Example:  invsr upscale photos/ out/ --preset blur",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
presets_app = typer.Typer(help="List and show presets.\n\nExample:  invsr presets show blur", no_args_is_help=False)
models_app = typer.Typer(help="Fetch and inspect model weights.\n\nExample:  invsr models download", no_args_is_help=True)
app.add_typer(presets_app, name="presets")
app.add_typer(models_app, name="models")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"invsr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Batch x4 image super-resolution with InvSR."""


# -- upscale ------------------------------------------------------------------------------------------------------

SAMPLING = "Sampling"
TILING = "Tiling and batching"
OUTPUT = "Output"
MODELS = "Models and device"
RUN = "Run"
SIZE = "Output size"
VIDEO = "Video"


@app.command(
    epilog="Examples:\n\n"
    "  invsr upscale in/ out/ --steps 1\n\n"
    "  invsr upscale scans/ out/ --preset blur --format png\n\n"
    "  invsr upscale raw/ out/ --format jxl --lossless\n\n"
    "  invsr upscale photos/ out/ --format avif --quality 80 --strip-metadata\n\n"
    "  invsr upscale 'shots/**/*.jpg' out/ --preset auto\n\n"
    "  invsr upscale photos/ out/ --fit 1920x1080 --max-input-side 1024\n\n"
    "  find photos -name '*.jpg' -print0 | invsr upscale -0 - out/\n\n"
    "  invsr upscale /shared/in /shared/out --ray auto   (a Ray cluster; RAY_ADDRESS names it)\n\n"
    "  invsr upscale in/ out/ --devices all   (one worker per GPU)\n\n"
    "  invsr upscale in/ out/ --shard 0/4   (this machine's quarter; see docs/SCALING.md)\n\n"
    "  0 3 * * * invsr upscale -q -r /srv/inbox /srv/upscaled   (crontab: nightly, errors only)\n\n"
    "  invsr upscale in/ out/ --report out/report.html\n\n"
    "  invsr upscale clip.mp4 out/ --start 10 --end 15   (try five seconds of a video first)",
)
def upscale(
    paths: Annotated[list[str], typer.Argument(
        help="Input files, folders, quoted glob patterns ('shots/**/*.jpg') or - (paths on stdin), then the "
        "output folder (cp-style; or give it with -o).", show_default=False,
        metavar="INPUT... OUTPUT_DIR")],
    output: Annotated[str | None, typer.Option("-o", "--output", help="Output folder (then every PATH is an input).",
                                               rich_help_panel=RUN)] = None,
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Descend into sub-folders.",
                                            rich_help_panel=RUN)] = False,
    null: Annotated[bool, typer.Option("-0", "--null", help="Paths on stdin are NUL-separated (find -print0).",
                                       rich_help_panel=RUN)] = False,
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="Preset name or YAML path "
                                               "(default, noisy, blur, fidelity, perceptual, large, auto; see "
                                               "`invsr presets`).", rich_help_panel=SAMPLING)] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps 1..5 (official schedule).",
                                              rich_help_panel=SAMPLING)] = None,
    timesteps: Annotated[str | None, typer.Option(help="Custom schedule, e.g. 250,200,150 (descending, 1..1000).",
                                                  rich_help_panel=SAMPLING)] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default 0).", rich_help_panel=SAMPLING)] = None,
    posterior: Annotated[str | None, typer.Option(help="sample (default) or mean (deterministic).",
                                                  rich_help_panel=SAMPLING)] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale (default 1 = off).",
                                                   rich_help_panel=SAMPLING)] = None,
    color_fix: Annotated[str | None, typer.Option("--color-fix", help="none (default), wavelet, ycbcr or adain.",
                                                  rich_help_panel=SAMPLING)] = None,
    tile: Annotated[int | None, typer.Option(help="LR tile size, a multiple of 16 (default 128).",
                                             rich_help_panel=TILING)] = None,
    overlap: Annotated[int | None, typer.Option(help="Tile overlap in LR pixels (default 32; the authors use 64).",
                                                rich_help_panel=TILING)] = None,
    blend: Annotated[str | None, typer.Option(help="gaussian (default, the authors') or linear.",
                                              rich_help_panel=TILING)] = None,
    batch_size: Annotated[str | None, typer.Option("--batch-size", help="Tiles per forward pass, or auto.",
                                                   rich_help_panel=TILING)] = None,
    scale: Annotated[float | None, typer.Option(help="Output scale (0 < scale <= 4; 4 is native, others resize "
                                                "the x4 result down).", rich_help_panel=SIZE)] = None,
    width: Annotated[int | None, typer.Option(help="Output width in px; the height follows the aspect ratio.",
                                              rich_help_panel=SIZE, show_default=False)] = None,
    height: Annotated[int | None, typer.Option(help="Output height in px; the width follows the aspect ratio.",
                                               rich_help_panel=SIZE, show_default=False)] = None,
    fit: Annotated[str | None, typer.Option(help="The largest size inside a WxH box, e.g. 1920x1080.",
                                            rich_help_panel=SIZE, show_default=False)] = None,
    long_side: Annotated[int | None, typer.Option("--long-side", help="Output long side in px.",
                                                  rich_help_panel=SIZE, show_default=False)] = None,
    short_side: Annotated[int | None, typer.Option("--short-side", help="Output short side in px.",
                                                   rich_help_panel=SIZE, show_default=False)] = None,
    passes: Annotated[int | None, typer.Option(help="2 allows targets above x4 (up to x16): the x4 result is "
                                               "upscaled again (default 1: refuse them, exit 2).",
                                               rich_help_panel=SIZE, show_default=False)] = None,
    max_input_side: Annotated[int | None, typer.Option("--max-input-side", help="First reduce inputs whose long "
                                                       "side is larger to this (area filter).",
                                                       rich_help_panel=SIZE, show_default=False)] = None,
    skip_if_larger: Annotated[int | None, typer.Option("--skip-if-larger", help="Leave inputs whose long side is "
                                                       "at least this untouched (reported as skipped).",
                                                       rich_help_panel=SIZE, show_default=False)] = None,
    first_frame: Annotated[bool | None, typer.Option("--first-frame/--all-frames", help="Animations: upscale the "
                                                     "first frame only, to a still (default: every frame).",
                                                     rich_help_panel=OUTPUT, show_default=False)] = None,
    segment_seconds: Annotated[float | None, typer.Option("--segment-seconds", help="Videos: cut at keyframes "
                                                          "into segments of about this long, each a unit of work "
                                                          "(default 10).", rich_help_panel=VIDEO,
                                                          show_default=False)] = None,
    start: Annotated[float | None, typer.Option("--start", help="Videos: begin at this second (moved back to the "
                                                "keyframe before it).", rich_help_panel=VIDEO,
                                                show_default=False)] = None,
    end: Annotated[float | None, typer.Option("--end", help="Videos: stop before this second.",
                                              rich_help_panel=VIDEO, show_default=False)] = None,
    max_frames: Annotated[int | None, typer.Option("--max-frames", help="Videos: at most this many frames.",
                                                   rich_help_panel=VIDEO, show_default=False)] = None,
    video_codec: Annotated[str | None, typer.Option("--video-codec", help="Videos: encoder or family (h264, hevc, "
                                                    "vp9, av1, libx264...; default: the input's family where the "
                                                    "bundled FFmpeg has it, else libx264).",
                                                    rich_help_panel=VIDEO, show_default=False)] = None,
    crf: Annotated[int | None, typer.Option("--crf", help="Videos: the encoder's constant quality, 0..63 (lower "
                                            "is better; default 18 for x264, 20 x265, 24 VP9/AV1).",
                                            rich_help_panel=VIDEO, show_default=False)] = None,
    pix_fmt: Annotated[str | None, typer.Option("--pix-fmt", help="Videos: the output's pixel format (default "
                                                "yuv420p, which plays everywhere).", rich_help_panel=VIDEO,
                                                show_default=False)] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="auto (the input's), png, jpg, webp, tiff, avif, "
                                            "jxl (needs invsr-cli[jxl]) or gif.", rich_help_panel=OUTPUT)] = None,
    quality: Annotated[int | None, typer.Option(help="Quality 1..100 for jpg/webp/avif/jxl (default 95).",
                                                rich_help_panel=OUTPUT)] = None,
    lossless: Annotated[bool | None, typer.Option("--lossless", help="Lossless webp/jxl (png/tiff always are); "
                                                  "with --format auto, jpg/avif/heic inputs give png.",
                                                  rich_help_panel=OUTPUT, show_default=False)] = None,
    strip_metadata: Annotated[bool | None, typer.Option("--strip-metadata", help="Write no metadata at all: no "
                                                        "EXIF, ICC, XMP or provenance.", rich_help_panel=OUTPUT,
                                                        show_default=False)] = None,
    no_provenance: Annotated[bool, typer.Option("--no-provenance", help="Do not record how the output was made "
                                                "(see `invsr inspect`); EXIF and ICC are still kept.",
                                                rich_help_panel=OUTPUT)] = False,
    suffix: Annotated[str | None, typer.Option(help="Appended to output file stems, e.g. _x4.",
                                               rich_help_panel=OUTPUT)] = None,
    skip_existing: Annotated[bool | None, typer.Option(
        "--skip-existing/--overwrite", help="Keep up-to-date outputs (default) or recompute everything.",
        rich_help_panel=OUTPUT, show_default=False)] = None,
    max_pixels: Annotated[int | None, typer.Option("--max-pixels", help="Refuse inputs larger than this many "
                                                   "pixels (default 8000000), checked before decoding.",
                                                   rich_help_panel=RUN)] = None,
    max_tiles: Annotated[int | None, typer.Option("--max-tiles", help="Refuse inputs that would cost more than "
                                                  "this many tiles (every frame, every pass; default 5000), "
                                                  "counted before compute.", rich_help_panel=RUN)] = None,
    device: Annotated[str | None, typer.Option(help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.",
                                               rich_help_panel=MODELS)] = None,
    dtype: Annotated[str | None, typer.Option(help="auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16.",
                                              rich_help_panel=MODELS)] = None,
    vae_fp32: Annotated[bool | None, typer.Option("--vae-fp32/--no-vae-fp32", help="Keep the VAE in fp32 "
                                                  "(avoids fp16 overflow).", rich_help_panel=MODELS,
                                                  show_default=False)] = None,
    compile_: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the UNet (slow "
                                                  "first batch, faster after).",
                                                  rich_help_panel=MODELS, show_default=False)] = None,
    sd_model: Annotated[str | None, typer.Option("--sd-model", help="SD-Turbo: Hub id or local diffusers folder.",
                                                 rich_help_panel=MODELS)] = None,
    noise_predictor: Annotated[str | None, typer.Option("--noise-predictor", help="Noise predictor: local "
                                                        "file or REPO:FILE on the Hub.",
                                                        rich_help_panel=MODELS)] = None,
    devices: Annotated[str | None, typer.Option(help="Run one worker process per device, e.g. cuda:0,cuda:1, "
                                                "all (every visible GPU) or cpu,cpu (a device may repeat); "
                                                "instead of --device.", rich_help_panel=MODELS)] = None,
    shard: Annotated[str | None, typer.Option(help="Process only shard I of N (0-based, e.g. 0/4), chosen by a "
                                              "stable hash of each input's relative path (default: from a "
                                              "Slurm array's SLURM_ARRAY_TASK_* variables, if set).",
                                              rich_help_panel=RUN)] = None,
    manifest: Annotated[Path | None, typer.Option(help="Run manifest path (default OUTPUT/.invsr-manifest.jsonl).",
                                                  rich_help_panel=RUN)] = None,
    wait: Annotated[bool, typer.Option("--wait", help="If another run holds the output folder, wait for it "
                                       "instead of exiting 75.", rich_help_panel=RUN)] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (files, final sizes, passes, tiles, "
                                          "outputs); compute nothing.", rich_help_panel=RUN)] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Errors only.", rich_help_panel=RUN)] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="More detail.", rich_help_panel=RUN)] = False,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout, then a summary.",
                                              rich_help_panel=RUN)] = False,
    report: Annotated[Path | None, typer.Option("--report", help="After the run, write a visual HTML report "
                                                "here (images in REPORT_files/ beside it).", metavar="HTML",
                                                rich_help_panel=RUN)] = None,
    ray: Annotated[str | None, typer.Option("--ray", metavar="auto|local|ADDRESS", help="Run on a Ray cluster "
                                            "(the invsr-cli[ray] extra): local starts one in this process, auto "
                                            "joins RAY_ADDRESS, or give HOST:PORT; outputs go to a shared "
                                            "file system.", rich_help_panel=RUN)] = None,
) -> None:
    """Upscale images and videos x4: files, folders, globs or a stdin list into an output folder."""
    from invsr_cli.run.discover import discover
    from invsr_cli.run.runner import run_batch
    from invsr_cli.settings.preset_files import load_policy
    from invsr_cli.work.report import make_reporter

    inputs, out_dir = _split_paths(paths, output)
    if report is not None and not dry_run:  # refused now, not after the whole compute
        from invsr_cli.base.writable import refuse_unwritable_file

        refuse_unwritable_file(report, "the report")
    flags = dict(
        steps=steps, timesteps=timesteps, seed=seed, posterior=posterior, guidance=guidance, color_fix=color_fix,
        tile=tile, overlap=overlap, blend=blend, batch_size=batch_size, scale=scale, format=fmt, quality=quality,
        suffix=suffix, skip_existing=skip_existing, max_pixels=max_pixels, max_tiles=max_tiles, device=device,
        dtype=dtype, vae_fp32=vae_fp32, compile=compile_, sd_model=sd_model, noise_predictor=noise_predictor,
        lossless=lossless, strip_metadata=strip_metadata, provenance=False if no_provenance else None,
        width=width, height=height, fit=fit, long_side=long_side, short_side=short_side, passes=passes,
        max_input_side=max_input_side, skip_if_larger=skip_if_larger, first_frame=first_frame,
        segment_seconds=segment_seconds, start=start, end=end, max_frames=max_frames, video_codec=video_codec,
        crf=crf, pix_fmt=pix_fmt,
    )
    policy = load_policy(preset, {k: v for k, v in flags.items() if v is not None})
    stdin_paths = _read_stdin(null) if "-" in inputs else None
    s = policy.run
    found = discover(inputs, out_dir, recursive=recursive, stdin_paths=stdin_paths, suffix=s.suffix, fmt=s.format,
                     lossless=s.lossless)
    reporter = make_reporter(json_output=json_output, quiet=quiet, verbose=verbose)
    executor, the_shard = _scaling(devices, device, ray, shard, found.jobs, quiet=quiet)
    with _stdout_holds_only_json(json_output):
        summary = run_batch(found.jobs, policy, output_dir=out_dir, reporter=reporter, dry_run=dry_run,
                            manifest_path=manifest, wait=wait, input_errors=found.errors, executor=executor,
                            shard=the_shard)
    if report is not None and not dry_run:
        from invsr_cli.commands.htmlreport import write_report

        result = write_report(out_dir, report, manifest_paths=[manifest] if manifest else None, summary=summary)
        if not quiet:
            print(f"invsr: report: {_report_line(report, result)}", file=sys.stderr, flush=True)
    raise typer.Exit(_exit_code(summary))


def _report_line(target: Path, result: Any) -> str:
    """Where the report went and what it holds (``invsr report`` and ``upscale --report``)."""
    pages = f", {len(result.pages)} pages" if len(result.pages) > 1 else ""
    return f"{target}: {result.images} image(s), {result.failed} failed{pages}"


def _scaling(devices: str | None, device: str | None, ray: str | None, shard: str | None, jobs: Any, *,
             quiet: bool) -> tuple[Any, Any]:
    """``--devices`` -> a DevicesExecutor, ``--ray`` -> a RayExecutor (or None: this process); ``--shard`` or
    Slurm's variables -> a Shard (or None), said on stderr with where it came from."""
    from invsr_cli.run.shard import resolve_shard

    executor = None
    if devices is not None and ray is not None:
        raise ConfigError("--devices and --ray both given: --devices runs workers on this machine, --ray on a Ray "
                          "cluster (which assigns the devices); drop one")
    if ray is not None:
        from invsr_cli.run.executors.ray_data import RayExecutor

        executor = RayExecutor(ray)  # exit 2 naming the extra when Ray is not installed
    if devices is not None:
        if device is not None:
            raise ConfigError("--devices and --device both given: --devices names each worker's device; drop one")
        from invsr_cli.run.executors.devices import DevicesExecutor, parse_devices

        executor = DevicesExecutor(parse_devices(devices))
    the_shard = resolve_shard(shard)
    if the_shard is not None and not quiet:
        mine = sum(1 for job in jobs if the_shard.holds(job.rel))
        print(f"invsr: shard {the_shard} (from {the_shard.source}): {mine} of {len(jobs)} input(s)",
              file=sys.stderr, flush=True)
    return executor, the_shard


def _stdout_holds_only_json(json_output: bool) -> contextlib.AbstractContextManager[Any]:
    """With --json, stdout carries the reporter's JSON lines and nothing else: whatever a library prints meanwhile
    (Ray's cluster messages come from a background thread) goes to stderr. The JSON reporter was made before, so
    it holds the real stdout."""
    return contextlib.redirect_stdout(sys.stderr) if json_output else contextlib.nullcontext()


def _split_paths(paths: list[str], output: str | None) -> tuple[list[str], Path]:
    if output is not None:
        if not paths:
            raise ConfigError("no inputs given; usage: invsr upscale INPUT... OUTPUT_DIR")
        return paths, Path(output)
    if len(paths) < 2:
        raise ConfigError("give at least one input and the output folder: invsr upscale INPUT... OUTPUT_DIR "
                          "(or -o OUTPUT_DIR)")
    out = Path(paths[-1])
    if out.exists() and not out.is_dir():
        raise ConfigError(f"the output folder {out} exists and is not a folder (the last path is the output folder; "
                          "use -o to name it explicitly)")
    return paths[:-1], out


def _read_stdin(null: bool) -> list[str]:
    if sys.stdin is None or sys.stdin.isatty():
        raise ConfigError("'-' reads input paths from stdin, but stdin is a terminal; pipe a list in "
                          "(find ... -print0 | invsr upscale -0 - out/)")
    data = sys.stdin.buffer.read()
    parts = data.split(b"\0") if null else data.splitlines()
    return [os.fsdecode(p) for p in parts if p.strip()]


def _exit_code(summary: Any) -> int:
    if summary.interrupted:
        return EXIT_SIGNAL.get(summary.interrupted, 130)
    if summary.failed or summary.stopped:
        return EXIT_FAILED
    return EXIT_OK


# -- watch --------------------------------------------------------------------------------------------------------

# `invsr watch` takes upscale's options, all but those that name inputs, only plan, report at the end, or spread
# the work over other processes (a watch is one service process holding its models): one list of options to
# keep. tests/test_watch.py checks that every other one maps to a Settings key.
_NOT_WATCH_OPTIONS = {"paths", "output", "recursive", "null", "dry_run", "report", "devices", "shard", "ray"}
_RUN_OPTIONS = {"preset", "manifest", "wait", "quiet", "verbose", "json_output"}  # not Settings keys
_SETTINGS_KEYS = {"fmt": "format", "compile_": "compile"}  # upscale parameters named apart from their key


@app.command(
    epilog="Examples:\n\n"
    "  invsr watch inbox/ out/\n\n"
    "  invsr watch inbox/ inbox/upscaled --preset auto --settle 5\n\n"
    "  invsr watch /mnt/share/in /mnt/share/out --poll 10 -q   (a network file system)",
)
def watch(
    input_dir: Annotated[Path, typer.Argument(help="The folder to watch, with its sub-folders.", show_default=False,
                                                              metavar="INPUT_DIR")],
    output_dir: Annotated[Path, typer.Argument(help="The output folder (inside INPUT_DIR is fine: it is ignored).",
                                               show_default=False, metavar="OUTPUT_DIR")],
    settle: Annotated[float, typer.Option(help="Seconds a new file's size and mtime must stay unchanged before "
                                          "it is read.", rich_help_panel=RUN)] = 2.0,
    poll: Annotated[float | None, typer.Option(help="Look every N seconds instead of waiting for file-system "
                                               "events (network file systems).", rich_help_panel=RUN)] = None,
    **options: Any,
) -> None:
    """Upscale what is in INPUT_DIR (as upscale -r), then each image that arrives or changes once it has settled,
    until SIGTERM or SIGINT (exit 0). Takes upscale's options."""
    from invsr_cli.run.watch import watch_folder
    from invsr_cli.settings.preset_files import load_policy
    from invsr_cli.work.report import make_reporter

    policy = load_policy(options["preset"], _watch_flags(options))
    reporter = make_reporter(json_output=options["json_output"], quiet=options["quiet"],
                             verbose=options["verbose"], tty=False)  # a log, not a progress bar
    with _stdout_holds_only_json(options["json_output"]):
        summary = watch_folder(input_dir, output_dir, policy, settle=settle, poll=poll, reporter=reporter,
                               manifest_path=options["manifest"], wait=options["wait"])
    raise typer.Exit(EXIT_FAILED if summary.stopped else EXIT_OK)  # a stop by signal is a clean stop


def _watch_flags(options: dict[str, Any]) -> dict[str, Any]:
    """upscale's option values (by parameter name) -> the Settings flags they set, as `upscale` maps them."""
    flags = {_SETTINGS_KEYS.get(k, k): v for k, v in options.items() if k not in _RUN_OPTIONS}
    flags["provenance"] = False if flags.pop("no_provenance", None) else None
    return {k: v for k, v in flags.items() if v is not None}


def _with_upscale_options(func: Any) -> inspect.Signature:
    own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
    shared = [p for name, p in inspect.signature(upscale, eval_str=True).parameters.items()
              if name not in _NOT_WATCH_OPTIONS]
    return inspect.Signature(own + shared)


watch.__signature__ = _with_upscale_options(watch)  # type: ignore[attr-defined]


# -- presets ------------------------------------------------------------------------------------------------------


@presets_app.callback(invoke_without_command=True)
def presets_list(ctx: typer.Context) -> None:
    """List presets with one-line descriptions.\n\nExample:  invsr presets"""
    if ctx.invoked_subcommand is not None:
        return
    from invsr_cli.settings.preset_files import available_presets, load_preset

    for name, source in available_presets().items():
        p = load_preset(name)
        origin = "" if _is_builtin(source) else f"  [{source}]"
        typer.echo(f"{name:<11} {p.description}{origin}")


@presets_app.command("show")
def presets_show(name: Annotated[str, typer.Argument(help="Preset name or YAML path.")]) -> None:
    """Show a preset's file and the settings it resolves to.\n\nExample:  invsr presets show blur"""
    import yaml

    from invsr_cli.settings.preset_files import load_policy, load_preset

    preset = load_preset(name)
    policy = load_policy(name, {})
    typer.echo(f"# {name}: {preset.description}\n# source: {preset.source}")
    if policy.measures:  # the rules, and the schedule each preset they can pick resolves to
        shown = {"auto": preset.auto, "choices": {k: list(v.timesteps) for k, v in policy.choices.items()}}
    else:
        shown = policy.settings.to_dict()
    typer.echo(yaml.safe_dump(shown, sort_keys=False).rstrip())


def _is_builtin(source: str) -> bool:
    return Path(source).parent.name == "presets" and Path(source).parent.parent.name == "invsr_cli"


# -- models -------------------------------------------------------------------------------------------------------


@models_app.command("download")
def models_download(
    sd_model: Annotated[str | None, typer.Option("--sd-model", help="Hub id or local folder.")] = None,
    noise_predictor: Annotated[str | None, typer.Option("--noise-predictor", help="Local file, REPO:FILE, or the "
                                                        "short names v5 / v5_diftune.")] = None,
    lpips: Annotated[bool, typer.Option("--lpips", help="Also fetch LPIPS-VGG (VGG16 + v0.1 heads) for invsr eval, "
                                        "into torch's hub cache.")] = False,
    training: Annotated[bool, typer.Option("--training", help="Also fetch the released discriminator and latent "
                                           "LPIPS for invsr train.")] = False,
) -> None:
    """Pre-fetch the weights into the Hugging Face cache (for offline and cron machines).\n
    Example:  invsr models download   (then run jobs with HF_HUB_OFFLINE=1)"""
    from invsr_cli.engine import DEFAULT_SD_MODEL, download_models

    result = download_models(sd_model=sd_model or DEFAULT_SD_MODEL, noise_predictor=noise_predictor)
    if lpips:
        from invsr_cli.quality.lpips import download_lpips

        result["lpips"] = ", ".join(map(str, download_lpips()))
    if training:
        from invsr_cli.training.weights import download_training

        result.update(download_training())
    for name, where in result.items():
        typer.echo(f"{name}: {where}")


@models_app.command("info")
def models_info(
    sd_model: Annotated[str | None, typer.Option("--sd-model", help="Hub id or local folder.")] = None,
    noise_predictor: Annotated[str | None, typer.Option("--noise-predictor", help="Local file or REPO:FILE.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Show where the weights are and their sizes, without downloading; exit 3 when a required file is
    missing.\n\nExample:  invsr models info"""
    import json

    from invsr_cli.base.errors import WeightsUnavailableError
    from invsr_cli.commands.models import print_models_table
    from invsr_cli.engine import DEFAULT_SD_MODEL
    from invsr_cli.engine import models_info as info

    rows = info(sd_model=sd_model or DEFAULT_SD_MODEL, noise_predictor=noise_predictor)
    if json_output:
        typer.echo(json.dumps(rows, indent=2, default=str))
    else:
        print_models_table(rows)
    complete = all(r["present"] or not r["required"] for r in rows)
    raise typer.Exit(EXIT_OK if complete else WeightsUnavailableError.exit_code)


# -- inspect ------------------------------------------------------------------------------------------------------


@app.command("inspect", epilog="Examples:\n\n  invsr inspect out/photo.png\n\n"
             "  invsr inspect out/*.jpg --json | jq -r .provenance.seed")
def inspect_outputs(
    files: Annotated[list[Path], typer.Argument(help="Image files written by invsr.", show_default=False,
                                                metavar="FILE...")],
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per file: file, provenance "
                                              "(null when none), error.")] = False,
) -> None:
    """Print how each output was made: the provenance record invsr embeds (version, preset, schedule, seed,
    models, ...). Exit 1 when a file cannot be read; a file without a record is not an error."""
    import json

    from invsr_cli.base.errors import ImageReadError
    from invsr_cli.base.paths import display_path
    from invsr_cli.imaging.provenance import read_provenance

    failed = 0
    for path in files:
        record, error = None, None
        try:
            record = read_provenance(path)
        except ImageReadError as e:
            error, failed = str(e), failed + 1
        if json_output:
            typer.echo(json.dumps({"file": display_path(path), "provenance": record, "error": error},
                                  ensure_ascii=False))
        elif error:
            _print_error(error)
        elif record is None:
            typer.echo(f"{display_path(path)}: no invsr provenance record")
        else:
            typer.echo(f"{display_path(path)}:")
            for key, value in record.items():
                shown = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value
                typer.echo(f"  {key:<16} {shown}")
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


# -- analyse ------------------------------------------------------------------------------------------------------


@app.command(epilog="Example:\n\n  invsr analyse photos/ -r --json")
def analyse(
    paths: Annotated[list[str], typer.Argument(help="Input files, folders, globs or - (stdin).", show_default=False,
                                               metavar="INPUT...")],
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Descend into sub-folders.")] = False,
    null: Annotated[bool, typer.Option("-0", "--null", help="Paths on stdin are NUL-separated.")] = False,
    preset: Annotated[str, typer.Option("--preset", "-p", help="The auto preset whose rules decide.")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per image.")] = False,
    max_input_side: Annotated[int | None, typer.Option("--max-input-side", help="First reduce inputs whose long "
                                                       "side is larger to this, as upscale does, then measure.",
                                                       show_default=False)] = None,
) -> None:
    """Measure noise, blur and JPEG blockiness, and show the preset `--preset auto` would choose."""
    from invsr_cli.commands.analyse import analyse_inputs
    from invsr_cli.settings.auto_rules import AutoPolicy
    from invsr_cli.settings.preset_files import load_policy

    flags = {} if max_input_side is None else {"max_input_side": max_input_side}
    policy = load_policy(preset, flags)
    if not isinstance(policy, AutoPolicy):
        raise ConfigError(f"preset `{preset}` has no `auto` rules; analyse needs an auto preset")
    stdin_paths = _read_stdin(null) if "-" in paths else None
    rows = analyse_inputs(paths, policy.rules, recursive=recursive, stdin_paths=stdin_paths,
                          read_settings=policy.run)
    failed = sum(1 for r in rows if r.get("error"))
    if json_output:
        import json

        for r in rows:
            typer.echo(json.dumps(r, ensure_ascii=False))
    else:
        _analyse_table(rows)
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


def _analyse_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"  # None: not measurable (e.g. blur of a flat image)

    table = Table("input", "noise σ (/255)", "blur σ (px)", "blockiness", "preset", "why", box=None)
    for r in rows:
        if r.get("error"):
            table.add_row(r["input"], "", "", "", "error", r["error"])
        else:
            table.add_row(r["input"], num(r["noise_sigma"]), num(r["blur"]), num(r["blockiness"]), r["preset"],
                          r["reason"])
    Console(soft_wrap=True).print(table)


# -- bench --------------------------------------------------------------------------------------------------------


@app.command(epilog="Example:\n\n  invsr bench --quick --json\n\n"
             "  invsr bench --lr-size 512x384 --overlap 64 --dtype bf16")
def bench(
    lr_size: Annotated[str, typer.Option("--lr-size", help="LR size WxH of each image.")] = "128x128",
    steps: Annotated[int, typer.Option(help="Sampling steps (1-5).")] = 1,
    tile: Annotated[int, typer.Option(help="Engine LR tile size.")] = 128,
    overlap: Annotated[int, typer.Option(help="Engine tile overlap (LR px).")] = 32,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Tiles per forward pass (both paths).")] = 1,
    images: Annotated[int, typer.Option(help="Number of images.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.")] = "auto",
    baseline_tile: Annotated[int, typer.Option("--baseline-tile", help="Baseline LR tile (the authors': 128).")
                             ] = 128,
    baseline_overlap: Annotated[int | None, typer.Option("--baseline-overlap", help="Baseline overlap "
                                                         "(default: half the baseline tile, as the authors).")
                                ] = None,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up runs of the engine path (and of the baseline "
                                        "on CUDA or with --compile).")] = 1,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the UNet (warm-up untimed).")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="LR 64x64, 1 step, CPU, tile 64.")] = False,
    tiny: Annotated[bool, typer.Option("--tiny", help="Tiny random models instead of full-size (tests).")] = False,
    no_baseline: Annotated[bool, typer.Option("--no-baseline", help="Measure the engine path only.")] = False,
    baseline_first: Annotated[bool, typer.Option("--baseline-first", help="Measure the baseline before the "
                                                 "engine path (the default order is engine first).")] = False,
    repeat: Annotated[int, typer.Option(help="Timed runs of each path, alternating (engine, baseline, baseline, "
                                        "engine, ...); each reports its median run.")] = 1,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Time the engine against the authors' pipeline (random weights, nothing downloaded)."""
    from invsr_cli.commands.bench import BenchOptions, render_table, run_bench, to_json

    with _stdout_holds_only_json(json_output):
        report = run_bench(BenchOptions(
            lr_size=lr_size, steps=steps, tile=tile, overlap=overlap, batch_size=batch_size, images=images,
            device=device, dtype=dtype, tiny=tiny, baseline=not no_baseline, baseline_tile=baseline_tile,
            baseline_overlap=baseline_overlap, warmup=warmup, compile=compile_, quick=quick,
            baseline_first=baseline_first, repeat=repeat,
        ))
    if json_output:
        typer.echo(to_json(report))
    else:
        render_table(report)


# -- report -------------------------------------------------------------------------------------------------------


@app.command("report", epilog="Examples:\n\n  invsr report out/\n\n  invsr report out/ -o ~/www/run.html --page-size 100")
def report_cmd(
    output_dir: Annotated[Path, typer.Argument(help="The output folder of a run (its .invsr-manifest*.jsonl files).",
                                               show_default=False, metavar="OUTPUT_DIR")],
    html: Annotated[Path | None, typer.Option("-o", "--output", help="The HTML page to write (default "
                                              "OUTPUT_DIR/report.html; images go to <name>_files/ beside it).",
                                              metavar="HTML")] = None,
    manifest: Annotated[list[Path] | None, typer.Option("--manifest", help="Read this manifest instead of "
                                                        "OUTPUT_DIR's (repeatable).")] = None,
    page_size: Annotated[int, typer.Option("--page-size", help="Images per page; more continue on "
                                           "<name>-2.html, ...")] = 200,
) -> None:
    """Write a static HTML report of a run from its manifest: summary, then each input beside its output."""
    from invsr_cli.commands.htmlreport import write_report

    target = html if html is not None else output_dir / "report.html"
    result = write_report(output_dir, target, manifest_paths=manifest or None, page_size=page_size)
    typer.echo(_report_line(target, result))


# -- doctor -------------------------------------------------------------------------------------------------------


@app.command(epilog="Examples:\n\n  invsr doctor\n\n  invsr doctor /srv/upscaled --json\n\n"
             "  HF_HUB_OFFLINE=1 invsr doctor --sd-model ./sd-turbo --noise-predictor ./np.pth out/")
def doctor(
    output_dir: Annotated[Path | None, typer.Argument(help="An output folder to check: really written to, and its "
                                                      "free space.", show_default=False,
                                                      metavar="OUTPUT_DIR")] = None,
    sd_model: Annotated[str | None, typer.Option("--sd-model", help="Hub id or local folder to look for.")] = None,
    noise_predictor: Annotated[str | None, typer.Option("--noise-predictor", help="Local file or REPO:FILE to "
                                                        "look for.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object: ready, and every check.")] = False,
) -> None:
    """Check this machine is ready to upscale, one line per check (pass/warn/fail, with the fix); exit 1 if a
    check fails. Nothing is downloaded; the self-test runs the whole pipeline on tiny random models."""
    import json
    import time

    from invsr_cli.commands.doctor import format_line, is_ready, run_checks

    def show(check: Any) -> None:
        typer.echo(format_line(check))

    t0 = time.perf_counter()
    checks = run_checks(output_dir, sd_model=sd_model, noise_predictor=noise_predictor,
                        on_check=None if json_output else show)
    ready = is_ready(checks)
    seconds = round(time.perf_counter() - t0, 1)
    if json_output:
        typer.echo(json.dumps({"ready": ready, "seconds": seconds, "checks": [c.to_dict() for c in checks]},
                              ensure_ascii=False, indent=2))
    else:
        failed = [c.name for c in checks if c.status == "fail"]
        warned = sum(c.status == "warn" for c in checks)
        typer.echo(f"ready ({warned} warning(s), {seconds} s)" if ready
                   else f"not ready: {len(failed)} check(s) failed: {', '.join(failed)} ({seconds} s)")
    raise typer.Exit(EXIT_OK if ready else EXIT_FAILED)


from invsr_cli.commands.evaluate import register as _register_eval  # noqa: E402 - `degrade` and `eval`

_register_eval(app, _read_stdin)
from invsr_cli.commands.train import register as _register_train  # noqa: E402 - `train`

_register_train(app)


# -- errors -> exit codes, in one place ---------------------------------------------------------------------------


def main() -> None:
    """Console-script entry point: every exception the commands raise is mapped to an exit code here.

    Click's standalone mode is off, so that Ctrl-C and a closed stdout reach the branches below instead of
    Click's own handlers (which print "Aborted!" or exit 1 and leave Python to complain at shutdown).
    """
    from invsr_cli.work.report import StdoutClosed

    try:
        code = app(prog_name="invsr", standalone_mode=False)
    except InvSRError as e:
        _print_error(str(e))
        sys.exit(e.exit_code)
    except typer.Abort as e:
        if isinstance(e.__context__, KeyboardInterrupt):  # older Typer turns Ctrl-C into Abort
            _interrupted()
        _print_error("aborted")
        sys.exit(EXIT_FAILED)
    except _CLICK_EXCEPTION as e:  # usage errors: Click's own message and code (2)
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except (StdoutClosed, BrokenPipeError):  # the reporters raise StdoutClosed; BrokenPipeError from elsewhere
        _stdout_gone()
    # Typer returns the code of a typer.Exit (and turns a KeyboardInterrupt into 130); None when a command
    # returned normally.
    sys.exit(code if isinstance(code, int) else EXIT_OK)


# Click's base exception, as the installed Typer raises it (recent Typer vendors Click as typer._click).
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _interrupted() -> NoReturn:
    """Ctrl-C outside the runner's own handling (or a second Ctrl-C, which abandons the run): the runner has
    printed its summary already when it was running; exit 130 without a traceback."""
    with contextlib.suppress(OSError):
        _print_error("interrupted")
    sys.exit(EXIT_SIGNAL["SIGINT"])


def _stdout_gone() -> NoReturn:
    """The reader of stdout went away (``invsr ... --json | head -n 1``): not an error of ours, so no message.

    Python would flush stdout again at shutdown and print "Exception ignored ... BrokenPipeError"; pointing
    stdout at /dev/null first is what the Python docs recommend (library/signal.html, "Note on SIGPIPE").
    The run stopped early, so the exit code is 1.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(EXIT_FAILED)


def _print_error(text: str) -> None:
    print(f"invsr: error: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover
    main()
