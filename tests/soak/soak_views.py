"""The soak's view (``FRESHET_VIEWS``): short windows and a 60 s TTL, so neither the flow's
state nor Redis may grow with the number of cards ever seen, only with the cards of the last
minute or two (drained entity states are dropped; Redis keys expire)."""

from __future__ import annotations

from freshet.dsl.definitions import Aggregation, Feature, FeatureView, Source
from freshet.dsl.views import CARD

SOAK_TXN = FeatureView(
    name="soak_txn",
    version=1,
    entity=CARD,
    source=Source(
        topic="soak_transactions",
        encoding="avro",
        schema="transaction.avsc",
        event_time_field="ts",
    ),
    features=(
        Feature("txn_count_1m", Aggregation.COUNT, window="1m"),
        Feature("amount_sum_1m", Aggregation.SUM, "amount", window="1m"),
        Feature("amount_max_1m", Aggregation.MAX, "amount", window="1m"),
        Feature("merchant_last", Aggregation.LAST, "merchant"),
    ),
    allowed_lateness_seconds=5,
    ttl_seconds=60,
)

VIEWS = [SOAK_TXN]
