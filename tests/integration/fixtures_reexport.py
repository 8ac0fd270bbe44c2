"""The integration suite's fixtures, for the other real-stack suites (tests/chaos, tests/soak).

Their conftest does ``from fixtures_reexport import *`` (with tests/integration on sys.path).
tests/integration/conftest.py is loaded under its own module name: pytest already knows it as a
conftest module, and importing it as "conftest" again would clash.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = [
    "_redis_db",
    "dev_stack",
    "kafka_admin",
    "kafka_bootstrap",
    "offline_dir",
    "redis_client",
    "redis_url",
    "topic_factory",
]


def _load() -> ModuleType:
    name = "freshet_integration_fixtures"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("conftest.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_fixtures = _load()
dev_stack = _fixtures.dev_stack
kafka_bootstrap = _fixtures.kafka_bootstrap
kafka_admin = _fixtures.kafka_admin
_redis_db = _fixtures._redis_db
redis_url = _fixtures.redis_url
redis_client = _fixtures.redis_client
topic_factory = _fixtures.topic_factory
offline_dir = _fixtures.offline_dir
