"""The soak test (``make soak``; marked slow, not part of ``make test``): it runs against the
shared stack with the integration suite's fixtures (loaded from ``tests/integration``)."""

from __future__ import annotations

import sys
from pathlib import Path

_INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
if str(_INTEGRATION) not in sys.path:
    sys.path.insert(0, str(_INTEGRATION))


from fixtures_reexport import *  # noqa: E402, F403  (the integration fixtures)
