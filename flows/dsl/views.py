"""The shipped demo views: card transactions over Avro (``card_txn``) and JSON (``card_txn_json``).

Used by ``freshet demo``, the docs and the benchmarks. Both read ``schemas/transaction.avsc``
(``card_id``, ``amount``, ``merchant``, ``ts`` in epoch milliseconds) and compute the same
features; only the topic and its encoding differ.
"""

from __future__ import annotations

from freshet.dsl.definitions import Aggregation, Entity, Feature, FeatureView, Source

__all__ = ["CARD", "CARD_TXN", "CARD_TXN_FEATURES", "CARD_TXN_JSON", "DEMO_VIEWS"]

CARD = Entity(name="card", key="card_id")

CARD_TXN_FEATURES: tuple[Feature, ...] = (
    Feature("txn_count_5m", Aggregation.COUNT, window="5m"),  # hop 10 s
    Feature("amount_sum_1h", Aggregation.SUM, "amount", window="1h"),  # hop 1 min
    Feature("amount_mean_1h", Aggregation.MEAN, "amount", window="1h"),
    Feature("amount_max_24h", Aggregation.MAX, "amount", window="24h"),  # hop 15 min
    Feature("merchant_last", Aggregation.LAST, "merchant"),  # lifetime
    Feature("merchant_distinct_24h", Aggregation.DISTINCT_COUNT, "merchant", window="24h"),
)

# Events up to 5 s behind their card's newest event are still aggregated; expiry rows wait 5 s.
_ALLOWED_LATENESS_SECONDS = 5
# A card's values stay servable for a week after their last change (merchant_last is lifetime).
_TTL_SECONDS = 7 * 86_400

CARD_TXN = FeatureView(
    name="card_txn",
    version=1,
    entity=CARD,
    source=Source(
        topic="transactions", encoding="avro", schema="transaction.avsc", event_time_field="ts"
    ),
    features=CARD_TXN_FEATURES,
    allowed_lateness_seconds=_ALLOWED_LATENESS_SECONDS,
    ttl_seconds=_TTL_SECONDS,
    dead_letter_topic="transactions_dlq",
)

CARD_TXN_JSON = FeatureView(
    name="card_txn_json",
    version=1,
    entity=CARD,
    source=Source(
        topic="transactions_json", encoding="json", schema="transaction.avsc", event_time_field="ts"
    ),
    features=CARD_TXN_FEATURES,
    allowed_lateness_seconds=_ALLOWED_LATENESS_SECONDS,
    ttl_seconds=_TTL_SECONDS,
    dead_letter_topic="transactions_json_dlq",
)

DEMO_VIEWS: tuple[FeatureView, ...] = (CARD_TXN, CARD_TXN_JSON)
