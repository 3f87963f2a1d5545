"""Inputs -> jobs: files, folders, glob patterns and stdin lists, with their output paths under OUTPUT_DIR.

Inputs (in the order given; duplicates, by resolved path, are dropped; the first occurrence names the output):

* a **file**: taken whatever its extension (a bad one is reported by the reader); output = its basename;
* a **folder**: its image files (:data:`IMAGE_EXTENSIONS`, case-insensitive), sorted; subfolders only with
  ``recursive`` (symlinked folders are followed, each real folder is visited once, so link loops end); output
  mirrors the path relative to the folder;
* a **glob pattern** (``*``, ``?``, ``[...]``; ``**`` = any number of folders) expanded here, not by the shell:
  image files only; output mirrors the path relative to the pattern's non-magic prefix folder
  (``shots/**/*.jpg`` -> relative to ``shots``);
* ``-``: the ``stdin_paths`` the CLI read (newline- or NUL-separated). Each is an explicit file, named by its
  basename, except a *relative* path without ``..`` components, which mirrors its normalised relative path (so
  ``find . -name '*.jpg' -print0 | invsr upscale -0 - out/`` reproduces the tree). Folders in the list (``find``
  prints them) are ignored.

Hidden files and folders (name starting with ``.``) are skipped inside folders and glob matches. Files inside
OUTPUT_DIR are never inputs: found by a walk or a glob they are skipped silently (re-runs over a tree that contains
the output folder), named explicitly they are reported.

Output names: ``suffix`` is appended to the stem, and the extension follows the output format: ``auto`` keeps the
input's own extension (spelling and case) for png/jpg/jpeg/webp/tif/tiff/avif/jxl, writes ``.jpg`` for HEIC/HEIF
(camera photos, lossy already: JPEG keeps them small and readable everywhere, where PNG would be 5-10 times
larger for no gain; HEIC itself is not written) and ``.png`` for the other formats we read but do not write
(bmp, or an unknown extension); a GIF is written as a GIF, still or animated (and ``--format gif`` writes
every input as one). With
``lossless``, ``auto`` writes ``.png`` for the inputs whose format has no lossless mode (jpg, avif, heic, and gif,
whose palette is lossy: an animated GIF becomes an APNG). ``png``/``jpg``/``webp``/``tiff``/``avif``/``jxl``/``gif`` use that
extension.
Every output must resolve inside OUTPUT_DIR (a symlinked folder inside OUTPUT_DIR pointing elsewhere
is a per-input error). Two inputs mapping to one output raise :class:`~invsr_cli.base.errors.ConfigError` before any
work starts.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from invsr_cli.base.errors import ConfigError
from invsr_cli.base.paths import display_path
from invsr_cli.imaging.formats import LOSSY_ONLY_FORMATS, OUTPUT_FORMATS, VIDEO_EXTENSIONS
from invsr_cli.work.job import Job

__all__ = [
    "IMAGE_EXTENSIONS",
    "Job",
    "DiscoveryResult",
    "Expansion",
    "FoundInput",
    "case_insensitive",
    "discover",
    "expand_inputs",
    "name_outputs",
    "output_name",
    "display_path",
]

# What imageio decodes (Pillow: PNG, JPEG, WebP, TIFF, BMP, GIF, AVIF; HEIC and JPEG XL with their extras).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".avif", ".heic",
     ".heif", ".hif", ".jxl"}
)
_EXT_FORMAT = {
    ".gif": "gif",  # animations stay GIFs (see invsr_cli.imaging.animation)
    ".png": "png",
    ".jpg": "jpg",
    ".jpeg": "jpg",
    ".jpe": "jpg",
    ".jfif": "jpg",
    ".webp": "webp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".avif": "avif",
    ".jxl": "jxl",
}
# Read but not written: what `auto` writes instead (see the module docstring for why HEIC becomes JPEG).
_AUTO_FALLBACK = {".heic": ("jpg", ".jpg"), ".heif": ("jpg", ".jpg"), ".hif": ("jpg", ".jpg")}
_LOSSY_AUTO = LOSSY_ONLY_FORMATS  # `auto` + lossless: these give png (gif: its palette is lossy)
_MAGIC = re.compile(r"[*?[]")
MAX_COLLISIONS_SHOWN = 10


@dataclass(frozen=True)
class FoundInput:
    """An image file an input named: its path, its path relative to its root, and the input that named it."""

    path: Path
    rel: PurePosixPath
    spec: str


@dataclass
class Expansion:
    inputs: list[FoundInput] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (input spec, reason)


@dataclass
class DiscoveryResult:
    jobs: list[Job] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (input spec, reason)


def _is_image_name(name: str) -> bool:
    """An image or a video (:data:`VIDEO_EXTENSIONS`): what folders and globs find."""
    ext = os.path.splitext(name)[1].lower()
    return ext in IMAGE_EXTENSIONS or ext in VIDEO_EXTENSIONS


def _sort_key(name: str) -> bytes:
    return os.fsencode(name)


def output_name(
    rel: PurePosixPath, *, suffix: str = "", fmt: str = "auto", lossless: bool = False
) -> tuple[PurePosixPath, str]:
    """Map an input's relative path to (relative output path, output format)."""
    name = rel.name
    stem, ext = os.path.splitext(name)
    if not stem:  # ".png" alone: splitext treats it as a stem
        stem, ext = name, ""
    if ext.lower() in VIDEO_EXTENSIONS:  # a video stays a video in its own container (--format is for images)
        return rel.with_name(stem + suffix + ext), "video"
    if fmt == "auto":
        out_fmt = _EXT_FORMAT.get(ext.lower())
        if out_fmt is None:
            out_fmt, ext = _AUTO_FALLBACK.get(ext.lower(), ("png", ".png"))
        if lossless and out_fmt in _LOSSY_AUTO:
            out_fmt, ext = "png", ".png"
    else:
        out_fmt, ext = fmt, "." + fmt
    return rel.with_name(stem + suffix + ext), out_fmt


class _Walker:
    """Folder walks that follow symlinked folders but visit each real folder once."""

    def __init__(self, out_real: str | None) -> None:
        self.out_real = out_real
        self.unreadable: list[str] = []

    def inside_output(self, real: str) -> bool:
        if self.out_real is None:
            return False
        return real == self.out_real or real.startswith(self.out_real.rstrip(os.sep) + os.sep)

    def walk(self, root: str, max_depth: int | None) -> Iterator[tuple[str, list[str]]]:
        """Yield (relative folder, its non-hidden non-folder entry names), depth-first, sorted by name bytes.

        Iterative (deep trees cannot exhaust the stack); a folder that cannot be listed is recorded in
        ``self.unreadable`` and skipped.
        """
        seen: set[tuple[int, int]] = set()
        stack: list[tuple[str, str, str, int]] = [(root, os.path.realpath(root), "", 0)]
        while stack:
            folder, real, rel, depth = stack.pop()
            try:
                st = os.stat(folder)
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: _sort_key(e.name))
            except OSError as exc:
                self.unreadable.append(f"{display_path(folder)}: cannot list folder: {exc.strerror or exc}")
                continue
            files: list[str] = []
            dirs: list[tuple[str, bool]] = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()  # follows symlinks
                    is_link = is_dir and entry.is_symlink()
                except OSError:
                    is_dir = is_link = False
                if is_dir:
                    dirs.append((entry.name, is_link))
                else:
                    files.append(entry.name)
            yield rel, files
            if max_depth is not None and depth >= max_depth:
                continue
            for name, is_link in reversed(dirs):  # reversed: the stack pops them in sorted order
                sub = os.path.join(folder, name)
                sub_real = os.path.realpath(sub) if is_link else os.path.join(real, name)
                if not self.inside_output(sub_real):
                    stack.append((sub, sub_real, f"{rel}/{name}" if rel else name, depth + 1))


def _split_glob(pattern: str) -> tuple[str, list[str]]:
    """-> (non-magic prefix folder, remaining pattern components). ``pattern`` contains a magic character."""
    parts = pattern.replace(os.sep, "/").split("/")
    first = next(i for i, part in enumerate(parts) if _MAGIC.search(part))
    prefix = "/".join(parts[:first]) or ("/" if pattern.startswith(("/", os.sep)) else ".")
    return prefix, [p for p in parts[first:] if p not in ("", ".")]


def _match_parts(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    if not pattern:
        return not parts
    head = pattern[0]
    if head == "**":
        return any(_match_parts(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _match_parts(pattern[1:], parts[1:])


class _Expansion:
    """Inputs -> the image files they name. ``exclude`` (OUTPUT_DIR, when outputs will be written) is never
    walked into, and a file inside it is no input."""

    def __init__(self, exclude: Path | None, recursive: bool) -> None:
        self.walker = _Walker(os.path.realpath(exclude) if exclude is not None else None)
        self.recursive = recursive
        self.result = Expansion()
        self.seen: set[str] = set()

    def add(self, spec: str, path: str, rel: PurePosixPath, *, explicit: bool) -> bool:
        """Queue one input; returns False when it was refused or skipped. Inside OUTPUT_DIR, an ``explicit``
        input is an error, others (walks, globs, stdin lists) are skipped silently."""
        real = os.path.realpath(path)
        if self.walker.inside_output(real):
            if explicit:  # (others: skipped silently)
                self.result.errors.append((spec, f"{display_path(path)}: is inside OUTPUT_DIR, not an input"))
            return False
        if real not in self.seen:  # a duplicate counts as found
            self.seen.add(real)
            self.result.inputs.append(FoundInput(Path(path), rel, spec))
        return True

    def folder(self, spec: str, root: str) -> None:
        found = False
        if self.walker.inside_output(os.path.realpath(root)):
            self.result.errors.append((spec, f"{display_path(root)}: is inside OUTPUT_DIR, not an input"))
            return
        for rel_dir, names in self.walker.walk(root, None if self.recursive else 0):
            for name in names:
                if not _is_image_name(name):
                    continue
                rel = PurePosixPath(rel_dir, name) if rel_dir else PurePosixPath(name)
                found |= self.add(spec, os.path.join(root, *rel.parts), rel, explicit=False)
        if not found:
            where = (
                "in this folder or its subfolders" if self.recursive else "in this folder (use -r to descend)"
            )
            self.result.errors.append((spec, f"{display_path(root)}: no image or video files {where}"))

    def glob(self, spec: str) -> None:
        prefix, pattern = _split_glob(spec)
        found = False
        if os.path.isdir(prefix):
            depth = None if "**" in pattern else max(len(pattern) - 1, 0)
            for rel_dir, names in self.walker.walk(prefix, depth):
                for name in names:
                    rel = PurePosixPath(rel_dir, name) if rel_dir else PurePosixPath(name)
                    if not _is_image_name(name) or not _match_parts(pattern, rel.parts):
                        continue
                    found |= self.add(spec, os.path.join(prefix, *rel.parts), rel, explicit=False)
        if not found:
            self.result.errors.append((spec, f"{display_path(spec)}: no image or video files match"))

    def explicit(self, spec: str, path: str, *, from_stdin: bool) -> None:
        raw = PurePosixPath(path.replace(os.sep, "/")) if os.sep != "/" else PurePosixPath(path)
        if from_stdin and not raw.is_absolute() and ".." not in raw.parts:
            rel = PurePosixPath(os.path.normpath(path).replace(os.sep, "/"))
        else:
            rel = PurePosixPath(raw.name)
        if not rel.name or rel.name in (".", ".."):
            self.result.errors.append((spec, f"{display_path(path)}: not a file name"))
            return
        self.add(spec, path, rel, explicit=not from_stdin)

    def stdin(self, paths: Sequence[str] | None) -> None:
        if paths is None:
            self.result.errors.append(("-", "stdin list requested but not provided"))
            return
        for path in paths:
            if not path:
                continue
            if os.path.isdir(path):
                continue  # `find` lists folders too
            if not os.path.lexists(path):
                self.result.errors.append((path, f"{display_path(path)}: no such file"))
                continue
            self.explicit(path, path, from_stdin=True)

    def one(self, spec: str, stdin_paths: Sequence[str] | None) -> None:
        self._one(spec, stdin_paths)
        self.result.errors.extend((spec, reason) for reason in self.walker.unreadable)
        self.walker.unreadable.clear()

    def _one(self, spec: str, stdin_paths: Sequence[str] | None) -> None:
        if spec == "-":
            self.stdin(stdin_paths)
        elif os.path.isdir(spec):
            self.folder(spec, spec)
        elif os.path.lexists(spec):
            self.explicit(spec, spec, from_stdin=False)
        elif _MAGIC.search(spec):
            self.glob(spec)
        else:
            self.result.errors.append((spec, f"{display_path(spec)}: no such file or folder"))


def case_insensitive(folder: str | os.PathLike[str]) -> bool:
    """Whether file names differing only in letter case are one file in ``folder`` (or, while it does not exist
    yet, in its nearest existing parent, where it will be made): probed with a temporary file, never assumed
    from the platform (macOS and Windows volumes can be either, and so can a Linux mount)."""
    import tempfile

    probe_dir = Path(folder).absolute()
    while not probe_dir.is_dir() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        fd, name = tempfile.mkstemp(prefix=".invsr-case-probe-", suffix=".tmp", dir=probe_dir)
    except OSError:
        return False  # cannot write there: the run will say so when it tries
    try:
        os.close(fd)
        swapped = os.path.join(probe_dir, os.path.basename(name).swapcase())
        return os.path.exists(swapped)
    finally:
        os.unlink(name)


def _check_collisions(jobs: Sequence[Job], *, fold_case: bool = False) -> None:
    by_output: dict[str, list[Job]] = {}
    for job in jobs:
        key = str(job.output)
        by_output.setdefault(key.casefold() if fold_case else key, []).append(job)
    clashes = [(js[0].output, js) for js in by_output.values() if len(js) > 1]
    if not clashes:
        return
    how = " (this file system ignores letter case)" if fold_case else ""
    lines = [
        f"{len(clashes)} output(s) would be written by more than one input{how} "
        "(rename the inputs or upscale them into different output folders):"
    ]
    for out, js in clashes[:MAX_COLLISIONS_SHOWN]:
        shown = ", ".join(f"{display_path(j.input)}" + (f" -> {display_path(j.output.name)}" if fold_case else "")
                          for j in js[:5]) + (
            f", ... ({len(js)} in all)" if len(js) > 5 else ""
        )
        lines.append(f"  {display_path(out)} <- {shown}")
    if len(clashes) > MAX_COLLISIONS_SHOWN:
        lines.append(f"  ... and {len(clashes) - MAX_COLLISIONS_SHOWN} more")
    raise ConfigError("\n".join(lines))


def expand_inputs(
    inputs: Sequence[str],
    *,
    recursive: bool = False,
    stdin_paths: Sequence[str] | None = None,
    exclude: str | os.PathLike[str] | None = None,
) -> Expansion:
    """Expand ``inputs`` into the image files they name (see the module docstring for the rules), without naming
    any output: ``invsr analyse`` uses it alone. ``exclude`` is the output folder of a run, never an input."""
    state = _Expansion(Path(exclude) if exclude is not None else None, recursive)
    for spec in inputs:
        state.one(spec, stdin_paths)
    return state.result


def name_outputs(found: Sequence[FoundInput], output_dir: str | os.PathLike[str], *, suffix: str = "",
                 fmt: str = "auto", lossless: bool = False) -> tuple[list[Job], list[tuple[str, str]]]:
    """Each input's output path under ``output_dir``; an output that would resolve outside it (through a symlinked
    folder) is an ``(input spec, reason)`` error instead."""
    output_dir = Path(output_dir)
    walker = _Walker(os.path.realpath(output_dir))
    jobs: list[Job] = []
    errors: list[tuple[str, str]] = []
    for f in found:
        out_rel, out_fmt = output_name(f.rel, suffix=suffix, fmt=fmt, lossless=lossless)
        output = output_dir.joinpath(*out_rel.parts)
        parent_real = os.path.realpath(output.parent)
        if not walker.inside_output(parent_real):
            errors.append((f.spec, f"{display_path(f.path)}: output {display_path(output)} would land outside "
                                   f"OUTPUT_DIR (through {display_path(parent_real)}); refused"))
            continue
        jobs.append(Job(f.path, output, f.rel, out_fmt, f.spec))
    return jobs, errors


def discover(
    inputs: Sequence[str],
    output_dir: str | os.PathLike[str],
    *,
    recursive: bool = False,
    stdin_paths: Sequence[str] | None = None,
    suffix: str = "",
    fmt: str = "auto",
    check_collisions: bool = True,
    fold_case: bool | None = None,
    lossless: bool = False,
) -> DiscoveryResult:
    """Expand ``inputs`` into jobs (see the module docstring for the rules).

    Inputs that do not exist or match nothing, and outputs that would escape OUTPUT_DIR, are collected in
    ``.errors`` as ``(input spec, one-line reason)``; the rest proceeds. Raises
    :class:`~invsr_cli.base.errors.ConfigError` for an unknown ``fmt``, a ``suffix`` containing a path separator, or
    two inputs that map to the same output (unless ``check_collisions`` is off: callers that write nothing).
    Outputs that differ only in letter case collide where the output folder's file system ignores case:
    ``fold_case`` says whether it does, ``None`` probes it (:func:`case_insensitive`). ``lossless``: with
    ``fmt="auto"``, inputs whose format has no lossless mode get png outputs.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"`format` must be one of {', '.join(OUTPUT_FORMATS)}; got {fmt!r}")
    if "/" in suffix or os.sep in suffix or "\x00" in suffix:
        raise ConfigError(f"`suffix` must not contain a path separator, got {suffix!r}")
    found = expand_inputs(inputs, recursive=recursive, stdin_paths=stdin_paths, exclude=output_dir)
    jobs, errors = name_outputs(found.inputs, output_dir, suffix=suffix, fmt=fmt, lossless=lossless)
    if check_collisions:
        if fold_case is None:
            fold_case = len(jobs) > 1 and case_insensitive(output_dir)
        _check_collisions(jobs, fold_case=fold_case)
    return DiscoveryResult(jobs, found.errors + errors)
