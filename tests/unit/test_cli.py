"""The ``freshet`` entry point: every command is listed, bad input is a message, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

FRESHET = [sys.executable, "-c", "from freshet.cli import main; main()"]

CONTRACT_COMMANDS = (
    "dev", "demo", "run", "backfill", "serve", "get", "views",
    "historical", "verify", "reconcile", "doctor",
)  # fmt: skip


def freshet(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FRESHET, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


def test_help_lists_every_command_of_the_interface_contract() -> None:
    result = freshet("--help")
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line}
    assert set(CONTRACT_COMMANDS) <= listed


@pytest.mark.parametrize("command", CONTRACT_COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = freshet(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: freshet" in result.stdout


def test_a_views_module_that_does_not_load_is_an_error_message_not_a_traceback() -> None:
    result = freshet("views", FRESHET_VIEWS="no_such_views_module")
    assert result.returncode == 2
    assert "no_such_views_module" in result.stderr
    assert "Traceback" not in result.stderr
