"""The README's command reference is checked against the code: every command and every option is documented,
and every command's help carries an example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from invsr_cli.commands.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands(group, prefix: tuple[str, ...] = ()):
    # Duck-typed: recent Typer releases ship their own copy of click's classes.
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        yield path, cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, path)


COMMANDS = list(_commands(typer.main.get_command(app)))


def test_the_walk_sees_subcommands_and_options():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"upscale", "presets show", "models download", "models info", "analyse"} <= names
    upscale = dict(COMMANDS)[("upscale",)]
    assert sum(p.param_type_name == "option" for p in upscale.params) > 20


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_command_is_in_the_readme_with_every_option(path, cmd):
    assert f"invsr {' '.join(path)}" in README, f"`invsr {' '.join(path)}` is not documented in README.md"
    for param in cmd.params:
        if param.param_type_name != "option" or getattr(param, "hidden", False):
            continue
        longs = [o for o in param.opts + param.secondary_opts if o.startswith("--")]
        assert any(re.search(rf"`[^`]*{re.escape(o)}\b", README) for o in longs), (
            f"`invsr {' '.join(path)}` option {longs} is not in README.md"
        )


@pytest.mark.parametrize(("path", "cmd"), [((), None), *COMMANDS], ids=["invsr", *(" ".join(p) for p, _ in COMMANDS)])
def test_command_help_carries_an_example(path, cmd):
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [*path, "--help"], prog_name="invsr")
    assert result.exit_code == 0, result.output
    help_text = result.output
    assert "Example" in help_text, f"`invsr {' '.join(path)} --help` has no example:\n{help_text}"
    # an example is a command line of this very command, not of another one
    example = re.compile(rf"^\s*(Example:\s+)?invsr {re.escape(' '.join(path))}\b", re.M)
    assert example.search(help_text), f"`invsr {' '.join(path)} --help` has no example of itself:\n{help_text}"
