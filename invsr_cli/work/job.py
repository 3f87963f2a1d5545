"""A job: one input file and where its output goes (discovery makes them; the unit of work consumes them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Job:
    """One image to upscale.

    ``rel`` is the input's path relative to its root (folder, glob prefix, or just the name), before the suffix
    and format mapping; ``output`` is the final path; ``format`` is the output format (png, jpg, webp, tiff);
    ``spec`` is the command-line input that produced the job.
    """

    input: Path
    output: Path
    rel: PurePosixPath
    format: str
    spec: str = ""
