"""freshet: streaming features from Kafka, served fresh from Redis, logged to Parquet.

Define a view, run it, serve and query it::

    from freshet import Aggregation, Entity, Feature, FeatureView, Source

    CARD_TXN = FeatureView(
        name="card_txn",
        version=1,
        entity=Entity(name="card", key="card_id"),
        source=Source(topic="transactions", encoding="json", schema="transaction.avsc",
                      event_time_field="ts"),
        features=(Feature("txn_count_5m", Aggregation.COUNT, window="5m"),),
    )

    # FRESHET_VIEWS=my_views freshet run card_txn     (the streaming flow)
    # freshet serve                                    (the lookup endpoint)
    from freshet import Client

    with Client("http://127.0.0.1:8000") as client:
        client.get("card_txn", "card_42")

This module is the public surface; everything else is reached through it or the ``freshet``
command. The packages beneath it, by concern: ``dsl`` (definitions and the view registry),
``engine`` (tiled window state), ``decode`` (Avro/JSON records to events), ``stream`` (the
Bytewax dataflow, its connectors, dead letters, metrics, graceful stop), ``backfill``,
``offline`` (training sets, verify/reconcile), ``ops`` (dev stack, doctor, generator), ``cli``,
``sinks`` (Redis and Parquet: writers and readers) and ``serving`` (the lookup endpoint).
Names are imported on first use, so ``import freshet`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from freshet.dsl.definitions import Aggregation, Entity, Feature, FeatureView, Source
    from freshet.dsl.services import FeatureService
    from freshet.offline.historical import historical_features, write_historical
    from freshet.serving.client import Client, ServingError
    from freshet.sinks.parquet_log import read_log

__all__ = [
    "Aggregation",
    "Client",
    "Entity",
    "Feature",
    "FeatureService",
    "FeatureView",
    "ServingError",
    "Source",
    "historical_features",
    "read_log",
    "write_historical",
]

_HOMES = {
    "Aggregation": "freshet.dsl.definitions",
    "Entity": "freshet.dsl.definitions",
    "Feature": "freshet.dsl.definitions",
    "FeatureView": "freshet.dsl.definitions",
    "FeatureService": "freshet.dsl.services",
    "Source": "freshet.dsl.definitions",
    "Client": "freshet.serving.client",
    "ServingError": "freshet.serving.client",
    "read_log": "freshet.sinks.parquet_log",
    "historical_features": "freshet.offline.historical",
    "write_historical": "freshet.offline.historical",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'freshet' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
