"""docs/operations.md and the code name the same commands, options and config keys (issue 17).

Commands and options come from click's command tree, config keys from the loader's
``KNOWN_KEYS``. The test fails when the docs name a command, option or key that does not exist,
or when one that exists is not documented: every command has a ``### `foresync CMD ...``` section
naming each of its options, and every section has a table row for each of its keys."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from foresync import config
from foresync.cli import main

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()


def commands(group: click.Group = main, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found.update(commands(command, f"{path} "))
        else:
            found[path] = command
    return found


def sections() -> dict[str, str]:
    """``### `foresync CMD ...``` heading's command path -> heading and body."""
    found = {}
    parts = re.split(r"^(#{2,3} .*)$", DOC, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        match = re.match(r"### `foresync ((?:[a-z]+ ?)+)", heading)
        if match:
            found[match.group(1).strip()] = heading + body
    return found


def long_flags(command: click.Command) -> list[list[str]]:
    return [[o for o in param.opts + param.secondary_opts if o.startswith("--")]
            for param in command.params if isinstance(param, click.Option) and "--help" not in param.opts]


def test_every_command_has_a_section_naming_each_of_its_options() -> None:
    documented = sections()
    missing = sorted(set(commands()) - set(documented))
    assert not missing, f"commands without a `### \\`foresync CMD` section in operations.md: {missing}"
    for path, command in commands().items():
        text = documented[path]
        for flags in long_flags(command):
            assert any(re.search(rf"{re.escape(flag)}\b", text) for flag in flags), (
                f"`foresync {path}`: option {flags[0]} is not in its section of operations.md")


def test_every_documented_command_and_option_exists() -> None:
    known = commands()
    for path, text in sections().items():
        assert path in known, f"operations.md documents `foresync {path}`, which does not exist"
        heading = text.splitlines()[0]
        flags = {flag for group in long_flags(known[path]) for flag in group}
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", heading):
            assert flag in flags, f"operations.md heading names {flag} for `foresync {path}`"
    named = set(re.findall(r"`foresync ([a-z]+(?: [a-z]+)?)", DOC))
    for words in named:
        first = words.split(" ")[0]
        assert first in main.commands, f"operations.md names `foresync {words}`: no such command"
    assert "--log-level" in DOC


@pytest.mark.parametrize("path", sorted(commands()))
def test_every_command_runs(path: str) -> None:
    result = CliRunner().invoke(main, [*path.split(" "), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output


def config_tables() -> dict[str, set[str]]:
    found = {}
    parts = re.split(r"^(#{2,3} .*)$", DOC, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        match = re.match(r"### `\[([a-z0-9]+)\]`", heading)
        if match:
            found[match.group(1)] = set(re.findall(r"^\| `([a-z_]+)` \|", body, flags=re.M))
    return found


def test_every_config_key_is_documented_and_every_documented_key_exists() -> None:
    tables = config_tables()
    assert set(tables) == set(config.KNOWN_KEYS), (sorted(tables), sorted(config.KNOWN_KEYS))
    for section, keys in config.KNOWN_KEYS.items():
        assert tables[section] == keys, (
            f"[{section}]: undocumented {sorted(keys - tables[section])}, "
            f"documented but unknown {sorted(tables[section] - keys)}")
