"""One CLI style: real placeholders in every help text, --version, the same flags for the same things."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

import typer

from fleetserve.cli import app as CLI


def _leaves(cmd, path=()):
    subs = getattr(cmd, "commands", None)
    if not subs:
        yield path
        return
    for name, sub in subs.items():
        yield from _leaves(sub, (*path, name))


ROOT = typer.main.get_command(CLI)


COMMANDS = list(_leaves(ROOT))


def _help(path) -> str:
    res = CliRunner().invoke(CLI, [*path, "--help"], prog_name="fleetserve", terminal_width=200)
    assert res.exit_code == 0, res.output
    return res.output


def test_every_command_is_listed():
    assert {("serve",), ("check",), ("plan",), ("loadtest", "run"), ("k8s", "render"), ("autoscaler", "explain")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_help_shows_placeholders_not_python_types(path):
    text = _help(path)
    assert not re.search(r"<(str|bool|int|float|path)[^>]*>|\{[A-Z_]+\}", text), text


def test_version():
    res = CliRunner().invoke(CLI, ["--version"], prog_name="fleetserve")
    assert res.exit_code == 0 and re.fullmatch(r"fleetserve \d+\.\d+\.\d+\n", res.output)


@pytest.mark.parametrize("path", [("serve",), ("check",), ("plan",), ("loadtest", "run"), ("loadtest", "sweep"),
                                  ("k8s", "render"), ("autoscaler", "replay")])
def test_the_config_is_dash_c_everywhere(path):
    assert re.search(r"--config\s+-c", _help(path))


@pytest.mark.parametrize("path", [("loadtest", "run"), ("loadtest", "sweep"), ("loadtest", "report"), ("k8s", "render")])
def test_the_output_is_dash_o_everywhere(path):
    assert re.search(r"--out\s+-o", _help(path))


@pytest.mark.parametrize("path", [("check",), ("loadtest", "run"), ("autoscaler", "explain")])
def test_the_first_hour_commands_carry_an_example(path):
    assert "Example: fleetserve " in _help(path)
