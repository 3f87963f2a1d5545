"""Settings: two frozen objects, resolved together by one pure function.

Precedence: built-in defaults < preset < explicit flags. ``resolve_settings`` is pure (no I/O); presets are
read from YAML by :mod:`invsr_cli.settings.preset_files` and handed to it. Every error names the key, where the value came
from (the preset file or the command-line flag) and the allowed values.

What a run fixes (:class:`RunSettings`: device, dtype, models, batching, the outputs' names, read-time limits) and
what an image gets (:class:`ImageSettings`: schedule, sampling, tiling, output size, encoding) are apart;
:class:`Settings` is the frozen pair, and reads as the one flat key set users see (flags, preset keys, records).

A preset is a YAML mapping that sets any subset of ``PRESET_KEYS`` plus ``description``. The special ``auto``
preset instead carries an ``auto:`` section (rules choosing another preset per image, :mod:`invsr_cli.settings.auto_rules`).
What varies per image lives in a :class:`SettingsPolicy`, which chooses only image settings: :class:`FixedPolicy`
gives every image the same; :class:`invsr_cli.settings.auto_rules.AutoPolicy` measures an image when it is prepared and gives
it the image settings of the preset its rules choose. ``resolve_policy`` (pure) builds them;
:func:`invsr_cli.settings.preset_files.load_policy` reads the preset files first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

from invsr_cli.base.errors import ConfigError
from invsr_cli.engine.devices import DEVICE_FORMS, canonical_dtype, parse_device
from invsr_cli.engine.schedules import (
    COLOR_FIXES,
    DTYPES,
    MAX_STEPS,
    POSTERIORS,
    default_timesteps,
    validate_timesteps,
)
from invsr_cli.geometry.sizing import SIZE_KEYS, parse_box
from invsr_cli.geometry.tiling import BLEND_MODES, max_overlap
from invsr_cli.imaging.formats import LOSSY_ONLY_FORMATS, OUTPUT_FORMATS

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "PRESET_KEYS",
    "IMAGE_KEYS",
    "KEYS",
    "RUN_KEYS",
    "VIDEO_OUTPUT_KEYS",
    "FixedPolicy",
    "ImageChoice",
    "ImageSettings",
    "Preset",
    "RunSettings",
    "Settings",
    "SettingsPolicy",
    "default_timesteps",
    "max_overlap",
    "resolve_policy",
    "resolve_settings",
    "validate_preset",
]

# Default input limit, in LR pixels, checked from the image header before decoding. 8 MP (e.g. 3264x2448) gives a
# 128 MP x4 output whose float32 blend buffers (RGB + weight) take 2 GiB; with SD-Turbo in fp16 (~2.6 GiB) and a
# batch of tiles this fits an 8 GB GPU.
DEFAULT_MAX_PIXELS = 8_000_000
# Default work limit per input file, in tiles (every frame, every pass). An 8 MP still at the default tile 128 and
# overlap 32 is 884 tiles (about 1,800 with a second pass at the same size), well inside; what it stops is a file
# whose pixel count is small but whose work is not (a GIF of tens of thousands of tiny frames).
DEFAULT_MAX_TILES = 5000

# Allowed values: each list is imported from the module that owns the rule (one owner per rule).
CHOICES: dict[str, tuple[str, ...]] = {
    "blend": BLEND_MODES,
    "posterior": POSTERIORS,
    "color_fix": ("none", *COLOR_FIXES),
    "dtype": DTYPES,
    "format": OUTPUT_FORMATS,
}


# Which keys a run fixes and which an image gets. A run fixes the device and dtype, the models, the batching, the
# output's name and container (``format`` and ``lossless`` decide the file name before any image is read) and the
# read-time limits; an image gets its schedule, sampling, tiling, output size and encoding. The flat key set users see
# (flags, preset files, records) is the union, in this order.
KEYS: tuple[str, ...] = (
    "timesteps", "guidance", "posterior", "seed", "color_fix", "tile", "overlap", "blend", "batch_size", "scale",
    "device", "dtype", "vae_fp32", "compile", "sd_model", "noise_predictor", "format", "quality", "suffix",
    "skip_existing", "max_pixels", "max_tiles", "lossless", "strip_metadata", "provenance", "width", "height", "fit", "long_side",
    "short_side", "passes", "max_input_side", "skip_if_larger", "first_frame", "segment_seconds", "start", "end",
    "max_frames", "video_codec", "crf", "pix_fmt", "preset",
)


@dataclass(frozen=True)
class RunSettings:
    """What a run fixes, the same for every image: where and with what it computes, how outputs are named, what
    is read."""

    batch_size: int | str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    vae_fp32: bool = False
    compile: bool = False
    sd_model: str = "stabilityai/sd-turbo"
    noise_predictor: str | None = None
    format: str = "auto"
    suffix: str = ""
    skip_existing: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_tiles: int = DEFAULT_MAX_TILES
    lossless: bool = False
    max_input_side: int | None = None
    skip_if_larger: int | None = None
    first_frame: bool = False
    # Videos (invsr_cli.run.videos): the segments (units of work) they are cut into at keyframes, the part kept,
    # the encoder (None: the input's codec family where the bundled FFmpeg has it, else libx264) and its quality.
    segment_seconds: float = 10.0
    start: float | None = None
    end: float | None = None
    max_frames: int | None = None
    video_codec: str | None = None
    crf: int | None = None
    pix_fmt: str = "yuv420p"


@dataclass(frozen=True)
class ImageSettings:
    """What one image gets: its schedule and sampling, tiling, output size and encoding, and the preset that gave
    them (a policy chooses it per image)."""

    timesteps: tuple[int, ...] = (200,)
    guidance: float = 1.0
    posterior: str = "sample"
    seed: int = 0
    color_fix: str = "none"
    tile: int = 128
    overlap: int = 32
    blend: str = "gaussian"
    scale: float = 4.0
    quality: int = 95
    strip_metadata: bool = False
    provenance: bool = True
    # Output size (invsr_cli.geometry.sizing): at most one of scale/width/height/fit/long_side/short_side is asked for
    width: int | None = None
    height: int | None = None
    fit: tuple[int, int] | None = None
    long_side: int | None = None
    short_side: int | None = None
    passes: int = 1
    preset: str = "default"

    def __post_init__(self) -> None:  # the forms to_dict writes: timesteps a list, fit "WxH"
        if not isinstance(self.timesteps, tuple):
            object.__setattr__(self, "timesteps", tuple(self.timesteps))
        if self.fit is not None and not isinstance(self.fit, tuple):
            object.__setattr__(self, "fit", parse_box(self.fit))

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def engine_key(self) -> tuple:
        """Images whose settings share this key can share an engine batch (same schedule and sampling)."""
        return (self.timesteps, self.guidance, self.posterior)


RUN_KEYS: tuple[str, ...] = tuple(f.name for f in fields(RunSettings))
IMAGE_KEYS: tuple[str, ...] = tuple(f.name for f in fields(ImageSettings))
_RUN = frozenset(RUN_KEYS)
_FLAT = frozenset(KEYS)
_IMAGE = frozenset((*IMAGE_KEYS, "steps", "engine_key"))


@dataclass(frozen=True, init=False)
class Settings:
    """The settings one image was made with: the run's and the image's, a frozen pair. Build it with
    resolve_settings; ``Settings(**keys)`` (the flat keys of :data:`KEYS`, as :meth:`to_dict` writes them) and
    ``Settings(run, image)`` build it too. Every flat key reads through (``s.tile`` is ``s.image.tile``), so
    records, provenance and fingerprints see the one flat key set."""

    run: RunSettings
    image: ImageSettings

    def __init__(self, run: RunSettings | None = None, image: ImageSettings | None = None, **keys: Any) -> None:
        unknown = sorted(set(keys) - _RUN - set(IMAGE_KEYS))
        if unknown:
            raise TypeError(f"Settings got unknown key `{unknown[0]}`")
        run_keys = {k: v for k, v in keys.items() if k in _RUN}
        image_keys = {k: v for k, v in keys.items() if k not in _RUN}
        run = run if run is not None else RunSettings()
        image = image if image is not None else ImageSettings()
        object.__setattr__(self, "run", replace(run, **run_keys) if run_keys else run)
        object.__setattr__(self, "image", replace(image, **image_keys) if image_keys else image)

    def __getattr__(self, name: str) -> Any:  # only for names not found the usual way: the flat keys
        if name in _RUN:
            return getattr(self.run, name)
        if name in _IMAGE:
            return getattr(self.image, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def output_fingerprint(self) -> str:
        """A short hash of every setting that changes an output's pixels or encoding (not device placement,
        batching or logging), so a run manifest can tell a stale output from an up-to-date one."""
        keys = ("timesteps", "guidance", "posterior", "seed", "color_fix", "tile", "overlap", "blend",
                "scale", "dtype", "vae_fp32", "sd_model", "noise_predictor", "format", "quality", "suffix")
        data = {k: getattr(self, k) for k in keys}
        # Added later: hashed only when not at their defaults, so older fingerprints stay valid.
        data.update({k: getattr(self, k) for k in _LATER_OUTPUT_KEYS if getattr(self, k) != getattr(DEFAULTS, k)})
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON): the record of these settings in the manifest, a Ray row and provenance; the flat
        keys (:data:`KEYS` order) and ``steps``."""
        d = {k: getattr(self, k) for k in KEYS}
        d["steps"] = self.steps
        d["timesteps"] = list(self.timesteps)
        d["fit"] = f"{self.fit[0]}x{self.fit[1]}" if self.fit else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Settings:
        """The settings a :meth:`to_dict` record holds (``Settings.from_dict(s.to_dict()) == s``). Derived keys
        (``steps``) and keys this version does not know are ignored, missing ones take their defaults: a record
        is read back as written, not validated again (:func:`resolve_settings` validates what users give)."""
        return cls(**{k: v for k, v in d.items() if k in _FLAT})


DEFAULTS = Settings()
_LATER_OUTPUT_KEYS = ("lossless", "strip_metadata", "provenance", "width", "height", "fit", "long_side",
                      "short_side", "passes", "max_input_side", "first_frame")
# What a video's output depends on beyond an image's (invsr_cli.run.videos.job_fingerprint adds them for videos
# only, so that `--crf` does not make every image stale). Not segment_seconds: it moves keyframes, not frames.
VIDEO_OUTPUT_KEYS = ("start", "end", "max_frames", "video_codec", "crf", "pix_fmt")
# -- validation ---------------------------------------------------------------------------------------------------
# Each validator gets the raw value and returns the normalised one, or raises ValueError with the allowed values.


def _int(lo: int | None = None, hi: int | None = None, multiple: int | None = None) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, str) and v.strip().lstrip("-").isdigit():
                v = int(v)
            else:
                raise ValueError(f"must be an integer, got {v!r}")
        if lo is not None and v < lo or hi is not None and v > hi:
            rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
            raise ValueError(f"must be in {rng}, got {v}")
        if multiple and v % multiple:
            raise ValueError(f"must be a multiple of {multiple}, got {v}")
        return v

    return check


def _float(lo: float, hi: float, lo_open: bool = False) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError(f"must be a number, got {v!r}")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number, got {v!r}") from None
        if not (lo < f if lo_open else lo <= f) or f > hi:
            raise ValueError(f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")
        return f

    return check


def _choice(key: str) -> Callable[[Any], str]:
    allowed = CHOICES[key]

    def check(v: Any) -> str:
        s = str(v).lower() if isinstance(v, str) else v
        if key == "format" and s == "jpeg":
            s = "jpg"
        if key == "dtype":
            s = canonical_dtype(s)
        if s not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {v!r}")
        return s

    return check


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise ValueError(f"must be true or false, got {v!r}")


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"must be a non-empty string, got {v!r}")
    return v


def _opt_str(v: Any) -> str | None:
    return None if v is None else _str(v)


def _suffix(v: Any) -> str:
    if not isinstance(v, str) or "/" in v or "\\" in v or "\0" in v:
        raise ValueError(f"must be a string without path separators, got {v!r}")
    return v


def _batch_size(v: Any) -> int | str:
    if v == "auto":
        return v
    try:
        return _int(1, 1024)(v)
    except ValueError:
        raise ValueError(f"must be 'auto' or an integer in 1..1024, got {v!r}") from None


def _opt_side(v: Any) -> int | None:
    return None if v is None else _int(1, 1_000_000)(v)


def _opt_seconds(v: Any) -> float | None:
    return None if v is None else _float(0.0, 1e7)(v)


def _opt_count(v: Any) -> int | None:
    return None if v is None else _int(1, None)(v)


def _opt_crf(v: Any) -> int | None:
    return None if v is None else _int(0, 63)(v)


def _box(v: Any) -> tuple[int, int] | None:
    return None if v is None else parse_box(v)


def _device(v: Any) -> str:
    try:
        return parse_device(_str(v))
    except ValueError:
        raise ValueError(f"must be one of {DEVICE_FORMS}, got {v!r}") from None


def _timesteps(v: Any) -> tuple[int, ...]:
    if isinstance(v, str):
        parts: Any = [p.strip() for p in v.split(",") if p.strip()]
        parts = [int(p) if p.lstrip("-").isdigit() else p for p in parts]
    elif isinstance(v, (list, tuple)):
        parts = list(v)
    else:
        raise ValueError(f"must be a list of integers like 250,200,150, got {v!r}")
    try:
        ts = validate_timesteps(parts)
    except ConfigError as e:
        raise ValueError(str(e).removeprefix("`timesteps` ")) from None
    if len(ts) > MAX_STEPS:
        raise ValueError(f"must hold 1 to {MAX_STEPS} timesteps, got {len(ts)}")
    return ts


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "steps": _int(1, MAX_STEPS),
    "timesteps": _timesteps,
    "guidance": _float(1.0, 20.0),
    "posterior": _choice("posterior"),
    "seed": _int(0, 2**63 - 1),
    "color_fix": _choice("color_fix"),
    "tile": _int(16, 2048, multiple=16),
    "overlap": _int(0, 2047),
    "blend": _choice("blend"),
    "batch_size": _batch_size,
    "scale": _float(0.0, 4.0, lo_open=True),
    "device": _device,
    "dtype": _choice("dtype"),
    "vae_fp32": _bool,
    "compile": _bool,
    "sd_model": _str,
    "noise_predictor": _opt_str,
    "format": _choice("format"),
    "quality": _int(1, 100),
    "suffix": _suffix,
    "skip_existing": _bool,
    "max_pixels": _int(1, None),
    "max_tiles": _int(1, None),
    "lossless": _bool,
    "strip_metadata": _bool,
    "provenance": _bool,
    "width": _opt_side,
    "height": _opt_side,
    "fit": _box,
    "long_side": _opt_side,
    "short_side": _opt_side,
    "passes": _int(1, 2),
    "max_input_side": _opt_side,
    "skip_if_larger": _opt_side,
    "first_frame": _bool,
    "segment_seconds": _float(0.0, 1e6, lo_open=True),
    "start": _opt_seconds,
    "end": _opt_seconds,
    "max_frames": _opt_count,
    "video_codec": _opt_str,
    "crf": _opt_crf,
    "pix_fmt": _str,
}

# Keys a preset (or a flag) may set. `steps` and `timesteps` are two spellings of one setting, the schedule.
PRESET_KEYS: tuple[str, ...] = tuple(_VALIDATORS)


@dataclass(frozen=True)
class Preset:
    name: str
    source: str  # file path, or "<built-in>"
    description: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)
    auto: Mapping[str, Any] | None = None  # raw `auto:` section (validated by invsr_cli.settings.analyse)


def validate_preset(preset: Preset) -> None:
    """Check every value a preset sets (its file named in errors), without resolving it."""
    _apply_layer({}, preset.values, f"preset `{preset.name}` ({preset.source})")


def _apply_layer(base: dict[str, Any], layer: Mapping[str, Any], where: str) -> None:
    """Validate ``layer`` and merge it into ``base`` in place. ``where`` names the source for errors."""
    unknown = sorted(set(layer) - set(_VALIDATORS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key `{unknown[0]}`; allowed keys: {', '.join(PRESET_KEYS)}"
        )
    clean: dict[str, Any] = {}
    for key, raw in layer.items():
        try:
            clean[key] = _VALIDATORS[key](raw)
        except ValueError as e:
            raise ConfigError(f"{where}: `{key}` {e}") from None
    if "steps" in clean and "timesteps" in clean and len(clean["timesteps"]) != clean["steps"]:
        raise ConfigError(
            f"{where}: `steps` is {clean['steps']} but `timesteps` has {len(clean['timesteps'])} values; "
            "give one of them"
        )
    sizes = [k for k in SIZE_KEYS if clean.get(k) is not None]
    if len(sizes) > 1:
        raise ConfigError(
            f"{where}: `{sizes[0]}` and `{sizes[1]}` both set the output size; give one of "
            f"{', '.join(SIZE_KEYS)}"
        )
    if sizes:  # a layer's output size replaces the one below it, whichever key each used
        for k in SIZE_KEYS:
            base.pop(k, None)
    if "steps" in clean:
        base["timesteps"] = default_timesteps(clean.pop("steps"))
    base.update(clean)


def _resolve_one(preset: Preset | None, flags: Mapping[str, Any], flag_source: str) -> Settings:
    values: dict[str, Any] = {}
    if preset is not None:
        _apply_layer(values, preset.values, f"preset `{preset.name}` ({preset.source})")
    # A flag's schedule replaces the preset's schedule whichever spelling each used.
    _apply_layer(values, {k: v for k, v in flags.items() if v is not None}, flag_source)
    values["preset"] = preset.name if preset is not None else "default"
    s = Settings(**values)
    if s.overlap > max_overlap(s.tile):
        raise ConfigError(
            f"`overlap` must be at most half of `tile` ({s.tile} LR px), so at most {max_overlap(s.tile)}; "
            f"got {s.overlap} (from {_origin('overlap', preset, flags, flag_source)})"
        )
    if s.lossless and s.format in LOSSY_ONLY_FORMATS:
        raise ConfigError(
            f"`lossless` needs a format with a lossless mode (png, webp, tiff, jxl or auto), got `format` "
            f"{s.format} (from {_origin('format', preset, flags, flag_source)})"
        )
    return s


def _origin(key: str, preset: Preset | None, flags: Mapping[str, Any], flag_source: str) -> str:
    if flags.get(key) is not None:
        return flag_source
    if preset is not None and key in preset.values:
        return f"preset `{preset.name}` ({preset.source})"
    return "the defaults"


def resolve_settings(
    preset: Preset | None = None,
    flags: Mapping[str, Any] | None = None,
    *,
    flag_source: str = "command line",
) -> Settings:
    """Resolve defaults < ``preset`` < ``flags`` into a frozen :class:`Settings`: the pair of the run's
    :class:`RunSettings` (``.run``) and the image's :class:`ImageSettings` (``.image``). Pure: no I/O.

    ``flags`` maps setting names to values; ``None`` means "not given". An ``auto`` preset chooses per image:
    resolve it with :func:`resolve_policy`.
    """
    if preset is not None and preset.auto is not None:
        raise ConfigError(f"preset `{preset.name}` ({preset.source}) chooses a preset per image; "
                          "resolve it with resolve_policy")
    return _resolve_one(preset, dict(flags or {}), flag_source)


# -- per-image settings ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageChoice:
    """What a policy gave one image: its :class:`ImageSettings`, and what decided them (``auto``: the estimates
    and the rule)."""

    image: ImageSettings
    degradation: Mapping[str, float | None] | None = None
    reason: str = ""


class SettingsPolicy(Protocol):
    """Chooses each image's :class:`ImageSettings` (and only those: ``run`` is the run's, the same for every image).
    ``choices``: every image settings it can give, by preset name; ``unmeasured``: what an image gets before it is
    measured (the dry run plans with it); ``measures``: it needs the pixels to choose."""

    @property
    def run(self) -> RunSettings: ...

    @property
    def choices(self) -> Mapping[str, ImageSettings]: ...

    @property
    def unmeasured(self) -> ImageSettings: ...

    @property
    def measures(self) -> bool: ...

    def for_image(self, rgb: Any) -> ImageChoice: ...

    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class FixedPolicy:
    """Every image gets the same settings."""

    settings: Settings

    @property
    def run(self) -> RunSettings:
        return self.settings.run

    @property
    def unmeasured(self) -> ImageSettings:
        return self.settings.image

    @property
    def choices(self) -> Mapping[str, ImageSettings]:
        return {self.settings.preset: self.settings.image}

    @property
    def measures(self) -> bool:
        return False

    def for_image(self, rgb: Any = None) -> ImageChoice:
        return ImageChoice(self.settings.image)

    def fingerprint(self) -> str:
        return self.settings.output_fingerprint()


def resolve_policy(
    preset: Preset | None = None,
    flags: Mapping[str, Any] | None = None,
    *,
    presets: Mapping[str, Preset] | None = None,
    auto_rules: Any = None,
    flag_source: str = "command line",
) -> SettingsPolicy:
    """Pure: a :class:`FixedPolicy` for a plain preset; for an ``auto`` preset the policy its rules make
    (:class:`invsr_cli.settings.auto_rules.AutoPolicy`): the run is the auto preset's (defaults < auto preset < ``flags``),
    each choice's image settings are defaults < chosen preset < ``flags`` (``presets`` holds every preset the rules
    name, ``auto_rules`` the parsed rules). A preset the rules can choose may set only image keys: one that sets a
    run key (the device, the models, the output's name, a read-time limit...) is refused, naming its file and the
    key, since one image cannot change what the whole run fixes."""
    flags = dict(flags or {})
    if preset is None or preset.auto is None:
        return FixedPolicy(_resolve_one(preset, flags, flag_source))
    if auto_rules is None or presets is None:
        raise ConfigError(f"preset `{preset.name}` ({preset.source}): an auto preset needs its rules and presets")
    base = _resolve_one(preset, flags, flag_source)
    choices: dict[str, ImageSettings] = {}
    for name in auto_rules.presets:
        if name not in presets:
            raise ConfigError(
                f"preset `{preset.name}` ({preset.source}): `auto` names unknown preset `{name}`; "
                f"available: {', '.join(sorted(presets))}"
            )
        chosen = presets[name]
        run_keys = [k for k in chosen.values if k in _RUN]
        if run_keys:
            raise ConfigError(
                f"preset `{chosen.name}` ({chosen.source}): `{run_keys[0]}` is fixed for the whole run, but "
                f"`{preset.name}` ({preset.source}) chooses this preset per image; a preset `auto` can choose may "
                f"set only {', '.join(k for k in PRESET_KEYS if k not in _RUN)} (give `{run_keys[0]}` on the "
                "command line or in the auto preset)"
            )
        choices[name] = replace(_resolve_one(chosen, flags, flag_source).image, preset=name)
    return auto_rules.policy(base.run, base.image, choices)
