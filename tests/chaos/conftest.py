"""Fault-injection tests against real Kafka and Redis: crashes, failing dependencies, bad input,
secrets. They reuse the integration suite's fixtures and helpers (``tests/integration``:
``kafka_bootstrap``, ``redis_url``, ``topic_factory``, ``pipeline_harness``, ``redis_servers``)
and, like it, fail instead of skipping when the stack is down. Every test here is marked
``integration``; tests that start a Kafka broker of their own are marked ``private_kafka``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
_INTEGRATION = _HERE.parent / "integration"
# The integration helpers are plain modules of that directory (pipeline_harness, redis_servers).
if str(_INTEGRATION) not in sys.path:
    sys.path.insert(0, str(_INTEGRATION))


def _load_integration_fixtures() -> object:
    # Loaded under its own name: pytest already knows tests/integration/conftest.py as a
    # conftest module; importing it as "conftest" again would clash.
    name = "freshet_integration_fixtures"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _INTEGRATION / "conftest.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_fixtures = _load_integration_fixtures()
dev_stack = _fixtures.dev_stack  # type: ignore[attr-defined]
kafka_bootstrap = _fixtures.kafka_bootstrap  # type: ignore[attr-defined]
kafka_admin = _fixtures.kafka_admin  # type: ignore[attr-defined]
_redis_db = _fixtures._redis_db  # type: ignore[attr-defined]
redis_url = _fixtures.redis_url  # type: ignore[attr-defined]
redis_client = _fixtures.redis_client  # type: ignore[attr-defined]
topic_factory = _fixtures.topic_factory  # type: ignore[attr-defined]
offline_dir = _fixtures.offline_dir  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of tests/chaos ``integration`` (they need the real stack)."""
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)
