"""Preset files: the shipped ones (``invsr_cli/presets/*.yaml``) and the user's (``$XDG_CONFIG_HOME/invsr/presets``,
which shadow shipped ones by name), found, read and validated; ``load_policy`` reads a preset (and, for ``auto``,
its rules and every preset they name) and resolves it with ``invsr_cli.settings.settings.resolve_policy``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from invsr_cli.base.errors import ConfigError
from invsr_cli.settings.settings import Preset, SettingsPolicy, resolve_policy, validate_preset

__all__ = ["available_presets", "load_policy", "load_preset", "user_preset_dir"]


def user_preset_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "invsr" / "presets"


def _builtin_dir() -> Any:
    return resources.files("invsr_cli") / "presets"


def available_presets() -> dict[str, str]:
    """name -> source of every preset visible by name: shipped ones, then user ones (which shadow shipped)."""
    found: dict[str, str] = {}
    for entry in sorted(_builtin_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            found[entry.name.rsplit(".", 1)[0]] = str(entry)
    udir = user_preset_dir()
    if udir.is_dir():
        for p in sorted(udir.iterdir()):
            if p.suffix in (".yaml", ".yml"):
                found[p.stem] = str(p)
    return found


def load_preset(name_or_path: str) -> Preset:
    """Read and validate one preset by name (user dir, then shipped) or by path (contains '/' or ends .yaml)."""
    import yaml

    looks_like_path = "/" in name_or_path or name_or_path.endswith((".yaml", ".yml"))
    if looks_like_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist")
        source, text = str(path), _read(path)
        name = path.stem
    else:
        known = available_presets()
        if name_or_path not in known:
            raise ConfigError(
                f"unknown preset `{name_or_path}`; available: {', '.join(sorted(known))} "
                f"(or a path to a YAML file; user presets go in {user_preset_dir()})"
            )
        source = known[name_or_path]
        text = _read(Path(source)) if Path(source).is_file() else (_builtin_dir() / Path(source).name).read_text()
        name = name_or_path
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"preset file {source}: not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset file {source}: must be a mapping of settings, got {type(data).__name__}")
    data = dict(data)
    description = data.pop("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"preset file {source}: `description` must be a string")
    auto = data.pop("auto", None)
    if auto is not None and not isinstance(auto, dict):
        raise ConfigError(f"preset file {source}: `auto` must be a mapping with `rules` and `fallback`")
    preset = Preset(name=name, source=source, description=description, values=data, auto=auto)
    validate_preset(preset)  # now, so a broken preset fails at load time with its file named
    return preset


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"preset file {path}: cannot be read: {e}") from None


def load_policy(preset_name: str | None, flags: Mapping[str, Any]) -> SettingsPolicy:
    """The I/O half of settings: read the preset (``default`` when none is named, so a user's own
    ``default.yaml`` applies), and for ``auto`` its rules and every preset they name; then resolve."""
    preset = load_preset(preset_name or "default")
    if preset.auto is None:
        return resolve_policy(preset, flags)
    from invsr_cli.settings.auto_rules import parse_auto_rules

    rules = parse_auto_rules(preset.auto, preset.source)
    presets = {name: load_preset(name) for name in rules.presets}
    return resolve_policy(preset, flags, presets=presets, auto_rules=rules)

