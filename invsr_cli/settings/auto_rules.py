"""The ``auto`` preset's decision rule: data, not code.

``presets/auto.yaml`` holds an ordered list of rules over the estimates of :mod:`invsr_cli.settings.analyse`; the first
rule whose every bound holds names the preset, otherwise the fallback does. A bound ``{min: a, max: b}`` holds
when ``a <= value < b``; either side may be left out. docs/AUTO_PRESET.md explains the thresholds.

    load_default_auto_rules() -> AutoRules     # the shipped invsr_cli/presets/auto.yaml
    parse_auto_rules(mapping, source) -> AutoRules   # a preset file's mapping (or its ``auto`` section)
    choose(deg, rules) -> Choice               # Choice(preset, rule_index, reason)
    AutoPolicy                                 # the settings policy the rules make: measure, choose, give settings
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from invsr_cli.base.errors import ConfigError
from invsr_cli.settings.analyse import METRICS, Degradation, analyse_image
from invsr_cli.settings.settings import ImageChoice, ImageSettings, RunSettings, Settings

__all__ = ["AutoPolicy", "AutoRules", "Bound", "Choice", "Rule", "choose", "choose_preset", "load_default_auto_rules",
           "parse_auto_rules"]


_PRESET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_AUTO_KEYS = ("rules", "fallback")
_RULE_KEYS = ("preset", "when", "why")
_BOUND_KEYS = ("min", "max")


@dataclass(frozen=True)
class Bound:
    """``min <= value < max``; a side that is ``None`` is open. NaN never satisfies a bound."""

    min: float | None = None
    max: float | None = None

    def holds(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value < self.max)

    def describe(self, metric: str) -> str:
        if self.min is not None and self.max is not None:
            return f"{self.min:g} <= {metric} < {self.max:g}"
        if self.min is not None:
            return f"{metric} >= {self.min:g}"
        return f"{metric} < {self.max:g}"


@dataclass(frozen=True)
class Rule:
    """Choose ``preset`` when every bound in ``when`` holds (``when`` is ``((metric, Bound), ...)``)."""

    preset: str
    when: tuple[tuple[str, Bound], ...]
    why: str = ""

    def matches(self, deg: Degradation) -> bool:
        return all(bound.holds(float(getattr(deg, metric))) for metric, bound in self.when)

    def describe(self) -> str:
        return " and ".join(bound.describe(metric) for metric, bound in self.when)


@dataclass(frozen=True)
class AutoRules:
    """The ``auto`` preset's decision rule: ordered rules (first match wins) and a fallback preset."""

    rules: tuple[Rule, ...]
    fallback: str
    # Where the rules were read from, for messages. Not in the repr, which the policy's fingerprint hashes: the
    # place invsr is installed must not make every auto output stale.
    source: str = field(default="<auto rules>", repr=False)

    @property
    def presets(self) -> tuple[str, ...]:
        """Every preset the rules can choose (rules in order, then the fallback), without repeats."""
        return tuple(dict.fromkeys([r.preset for r in self.rules] + [self.fallback]))

    def policy(self, run: RunSettings, unmeasured: ImageSettings, choices: Mapping[str, ImageSettings]) -> AutoPolicy:
        """The policy these rules make (:func:`invsr_cli.settings.settings.resolve_policy` resolves its parts)."""
        return AutoPolicy(run, unmeasured, self, choices)


@dataclass(frozen=True)
class Choice:
    """The preset chosen for one image, the index of the rule that matched (``None``: the fallback) and a
    one-line reason for logs, e.g. ``"rule 1: noise_sigma >= 7.5"``."""

    preset: str
    rule_index: int | None
    reason: str


def choose(deg: Degradation, rules: AutoRules) -> Choice:
    """Apply ``rules`` to ``deg``: the first rule whose bounds all hold wins, else the fallback."""
    for i, rule in enumerate(rules.rules):
        if rule.matches(deg):
            return Choice(rule.preset, i, f"rule {i + 1}: {rule.describe()}")
    return Choice(rules.fallback, None, "no rule matched: fallback")


def choose_preset(deg: Degradation, rules: AutoRules) -> str:
    """The name of the preset :func:`choose` picks."""
    return choose(deg, rules).preset


@dataclass(frozen=True)
class AutoPolicy:
    """The ``auto`` preset as a settings policy: measure each image (:mod:`invsr_cli.settings.analyse`) and give it the
    image settings of the preset its rules choose. ``run`` is the auto preset's own resolution (defaults < auto
    preset < flags), the same for every image; ``unmeasured`` is its image part (what the dry run plans with);
    ``choices`` holds each preset the rules can choose, resolved as defaults < that preset < flags."""

    run: RunSettings
    unmeasured: ImageSettings
    rules: AutoRules
    choices: Mapping[str, ImageSettings]

    @property
    def measures(self) -> bool:
        return True

    def for_image(self, rgb: Any) -> ImageChoice:
        deg = analyse_image(rgb)
        choice = choose(deg, self.rules)
        return ImageChoice(self.choices[choice.preset], deg.as_dict(), choice.reason)

    def fingerprint(self) -> str:
        """Every schedule the rules can pick and the rules themselves: an output is up to date only if the same
        rules would again lead to the same settings. (The same hash as when each choice was a whole Settings, so
        the manifests of earlier runs stay valid.)"""
        parts = [Settings(self.run, self.unmeasured).output_fingerprint(), repr(self.rules)]
        parts += [f"{k}={Settings(self.run, v).output_fingerprint()}" for k, v in sorted(self.choices.items())]
        return "auto-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _fail(source: str, path: str, problem: str) -> ConfigError:
    return ConfigError(f"{source}: {path}: {problem}")


def _typename(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _check_keys(
    source: str, path: str, mapping: object, allowed: tuple[str, ...], required: tuple[str, ...]
) -> dict:
    if not isinstance(mapping, Mapping):
        raise _fail(
            source, path, f"must be a mapping with keys {', '.join(allowed)}; got {_typename(mapping)}"
        )
    for key in mapping:
        if key not in allowed:
            raise _fail(source, f"{path}.{key}", f"unknown key {key!r}; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in mapping:
            raise _fail(source, f"{path}.{key}", f"missing (required keys: {', '.join(required)})")
    return dict(mapping)


def _check_preset(source: str, path: str, value: object, known: tuple[str, ...] | None) -> str:
    if not isinstance(value, str) or not _PRESET_NAME.match(value):
        raise _fail(
            source, path, f"must be a preset name (lowercase letters, digits, '-', '_'); got {value!r}"
        )
    if value == "auto":
        raise _fail(source, path, "'auto' cannot choose itself")
    if known is not None and value not in known:
        raise _fail(source, path, f"unknown preset {value!r}; allowed: {', '.join(known)}")
    return value


def _check_number(source: str, path: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(source, path, f"must be a finite number; got {value!r} ({_typename(value)})")
    return float(value)


def parse_auto_rules(mapping: object, source: str, known_presets: Iterable[str] | None = None) -> AutoRules:
    """Validate an ``auto`` preset and build its :class:`AutoRules`.

    Args:
        mapping: the preset file's parsed YAML (a mapping with an ``auto`` key; other top-level keys such as
            ``description`` are left to the settings layer), or the ``auto`` section itself.
        source: the file name, used in every error message.
        known_presets: the presets a rule may name; ``None`` accepts any well-formed name except ``auto``.

    Raises:
        ConfigError: ``"<source>: <key path>: <problem>"``, e.g.
            ``"auto.yaml: auto.rules[1].when.blurr: unknown metric 'blurr'; allowed: noise_sigma, blur, blockiness"``,
            for unknown keys or metrics, wrong types, empty conditions, ``min >= max`` and unknown presets.
    """
    known = tuple(sorted(set(known_presets))) if known_presets is not None else None
    if isinstance(mapping, Mapping) and "auto" in mapping:
        section = mapping["auto"]
    elif isinstance(mapping, Mapping):
        section = mapping
    else:
        raise _fail(
            source, "auto", f"must be a mapping with keys {', '.join(_AUTO_KEYS)}; got {_typename(mapping)}"
        )
    auto = _check_keys(source, "auto", section, _AUTO_KEYS, _AUTO_KEYS)
    fallback = _check_preset(source, "auto.fallback", auto["fallback"], known)
    raw_rules = auto["rules"]
    if not isinstance(raw_rules, list):
        raise _fail(
            source, "auto.rules", f"must be a list of rules (first match wins); got {_typename(raw_rules)}"
        )
    rules = []
    for i, raw_rule in enumerate(raw_rules):
        path = f"auto.rules[{i}]"
        rule = _check_keys(source, path, raw_rule, _RULE_KEYS, ("preset", "when"))
        preset = _check_preset(source, f"{path}.preset", rule["preset"], known)
        why = rule.get("why", "")
        if not isinstance(why, str):
            raise _fail(source, f"{path}.why", f"must be a string; got {_typename(why)}")
        when = rule["when"]
        if not isinstance(when, Mapping) or not when:
            raise _fail(
                source,
                f"{path}.when",
                f"must be a non-empty mapping of metric -> {{min, max}}; metrics: {', '.join(METRICS)}",
            )
        bounds = []
        for metric, raw_bound in when.items():
            mpath = f"{path}.when.{metric}"
            if metric not in METRICS:
                raise _fail(source, mpath, f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
            bound = _check_keys(source, mpath, raw_bound, _BOUND_KEYS, ())
            if not bound:
                raise _fail(source, mpath, "needs at least one of min, max")
            lo = _check_number(source, f"{mpath}.min", bound["min"]) if "min" in bound else None
            hi = _check_number(source, f"{mpath}.max", bound["max"]) if "max" in bound else None
            if lo is not None and hi is not None and lo >= hi:
                raise _fail(source, mpath, f"min ({lo:g}) must be less than max ({hi:g})")
            bounds.append((metric, Bound(lo, hi)))
        rules.append(Rule(preset, tuple(bounds), why))
    return AutoRules(tuple(rules), fallback, source)


@lru_cache(maxsize=1)
def load_default_auto_rules() -> AutoRules:
    """The shipped decision rule, ``invsr_cli/presets/auto.yaml`` (read with importlib.resources)."""
    import yaml

    resource = importlib.resources.files("invsr_cli") / "presets" / "auto.yaml"
    data = yaml.safe_load(resource.read_text(encoding="utf-8"))
    return parse_auto_rules(data, "invsr_cli/presets/auto.yaml")
