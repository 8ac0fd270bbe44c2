"""Options shared by the whole suite: ``--slow`` enables tests marked ``slow``; property tests
have no per-example deadline."""

from __future__ import annotations

import pytest
from hypothesis import settings

# Property tests check behaviour, not speed: on a busy 2-core machine one example can outlast
# Hypothesis's 200 ms default deadline with nothing wrong (a flaky failure in CI).
settings.register_profile("freshet", deadline=None)
settings.load_profile("freshet")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="also run tests marked slow (full-size property tests, soaks)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
