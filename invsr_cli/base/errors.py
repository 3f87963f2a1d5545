"""The library's own exceptions.

Every error the library raises on purpose derives from :class:`InvSRError` and carries the process exit code
that the CLI maps it to, so the CLI maps exceptions to exit codes in exactly one place.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "InvSRError",
    "ConfigError",
    "WeightsUnavailableError",
    "ModelLoadError",
    "UnsafeCheckpointError",
    "InputError",
    "ImageReadError",
    "VideoReadError",
    "OutputError",
    "DiskFullError",
    "InvalidOutputError",
    "LockedError",
    "describe_exception",
    "reason_of",
]


class InvSRError(Exception):
    """Base class of every error raised on purpose by invsr."""

    exit_code = 1


class ConfigError(InvSRError, ValueError):
    """A setting, preset, flag or argument is invalid (exit 2)."""

    exit_code = 2


class WeightsUnavailableError(InvSRError):
    """Model files are missing and cannot be fetched (exit 3). The message lists the files, where they were
    looked for and how to get them."""

    exit_code = 3


class ModelLoadError(InvSRError):
    """Model files exist but do not make a complete, exact model: missing, unexpected or mismatched keys,
    or an unreadable file (exit 3). The message names the component and the keys."""

    exit_code = 3


class UnsafeCheckpointError(ModelLoadError):
    """A checkpoint holds something other than a mapping of tensors (e.g. pickled code); it is refused
    without being executed."""


class InputError(InvSRError, ValueError):
    """An input (tensor or file) is not acceptable: wrong range, shape, size, or unreadable image."""


class ImageReadError(InputError):
    """An image file cannot be used; ``str(err)`` is a one-line reason naming the file."""


class VideoReadError(ImageReadError):
    """A video file cannot be used (unreadable, corrupt or truncated, a codec the bundled FFmpeg lacks, PyAV
    missing); ``str(err)`` names the file and, where decoding failed, the time and the frame."""


class OutputError(InvSRError):
    """One output could not be written (per-file failure)."""


class DiskFullError(OutputError):
    """Writing failed with ENOSPC/EIO/EDQUOT: continuing would fail every file, so the run stops."""


class InvalidOutputError(InvSRError):
    """The model produced an output that must not be written (NaN/inf, or a constant image)."""


class LockedError(InvSRError):
    """Another invsr run holds the output folder (exit 75, EX_TEMPFAIL)."""

    exit_code = 75


# A library message whose advice is for the library's developers, and what it means to a user: libjxl says
# "Generic Error. Please build `libjxl` from source ... in debug mode" for any damaged or cut-short file.
_LIBRARY_NOISE = (("Please build `libjxl` from source",
                   "the JPEG XL data is damaged or cut short; libjxl: generic decoding error"),)


def describe_exception(exc: BaseException) -> str:
    """``"TypeName: message"`` on one line (``"TypeName"`` when the message is empty): how a library's exception
    is quoted inside an error message naming a file (image reads, encodes and atomic writes). A message known to
    carry only advice for the library's own developers is replaced by what it means (``_LIBRARY_NOISE``)."""
    text = " ".join(str(exc).split())
    for marker, meaning in _LIBRARY_NOISE:
        if marker in text:
            return meaning
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def reason_of(e: BaseException, job: Any) -> str:
    """The first line of an error, without the input's own path (the outcome names it already). ``job`` is
    anything with the input's path as ``input`` or ``path``."""
    from invsr_cli.base.paths import display_path

    path = getattr(job, "input", None) or job.path
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.replace(f"{path}: ", "").replace(f"{display_path(path)}: ", "")
