"""The soak test (``make soak``; marked slow, not part of ``make test``): it runs against the
shared stack with the integration suite's fixtures (loaded from ``tests/integration``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
if str(_INTEGRATION) not in sys.path:
    sys.path.insert(0, str(_INTEGRATION))


def _load_integration_fixtures() -> object:
    name = "freshet_integration_fixtures"  # the name tests/chaos/conftest.py uses as well
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
