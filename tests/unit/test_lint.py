"""One name per module, as a test: ``flows``, ``sinks``, ``serving`` and ``schemas`` are folders of
the one ``freshet`` package, never import names (pyproject.toml's ruff ``banned-api``), so a
module imported under two names fails CI. (The rest of ruff runs with ``make lint``; only this
rule is a test, so a newer ruff's new rules cannot fail a build.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_module_is_imported_under_a_folder_name() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--select",
            "TID251",
            "--output-format",
            "concise",
            ".",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
