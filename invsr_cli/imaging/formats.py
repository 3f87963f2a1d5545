"""The output formats invsr writes, and which of them have no lossless mode: pure data with one owner, shared by
discovery (output names), settings (validation) and the writer (:mod:`invsr_cli.imaging.encode`), so none of them
keeps a copy. Why a format cannot be lossless is the writer's docstring."""

from __future__ import annotations

__all__ = ["WRITE_FORMATS", "OUTPUT_FORMATS", "LOSSY_ONLY_FORMATS", "VIDEO_EXTENSIONS"]

WRITE_FORMATS: tuple[str, ...] = ("png", "jpg", "webp", "tiff", "avif", "jxl")
# `auto`: keep the input's format where it can be written; `gif`: still or animated, written by
# invsr_cli.imaging.animation (not by the still-image writer), with no metadata
OUTPUT_FORMATS: tuple[str, ...] = ("auto", *WRITE_FORMATS, "gif")
LOSSY_ONLY_FORMATS: tuple[str, ...] = ("jpg", "avif", "gif")  # gif: its 256-colour palette is lossy
# Videos (invsr_cli.imaging.video reads them with PyAV's bundled FFmpeg): found in folders like images, written in
# their own container.
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi", ".ts", ".m2ts", ".mts", ".flv",
                                     ".wmv", ".mpg", ".mpeg", ".3gp", ".ogv")
