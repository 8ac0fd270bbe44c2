"""A view with windows of seconds (``FRESHET_VIEWS``), so a live flow drains an idle card's
windows within a test's time: two tilings whose expiry boundaries interleave (10 s windows on
2 s hops, 6 s windows on 3 s hops) and 1 s of allowed lateness."""

from __future__ import annotations

from freshet.dsl.definitions import Aggregation, Feature, FeatureView, Source
from freshet.dsl.views import CARD

DRAIN_TXN = FeatureView(
    name="drain_txn",
    version=1,
    entity=CARD,
    source=Source(
        topic="drain_transactions",
        encoding="json",
        schema="transaction.avsc",
        event_time_field="ts",
    ),
    features=(
        Feature("txn_count_10s", Aggregation.COUNT, window="10s", hop="2s"),
        Feature("amount_sum_10s", Aggregation.SUM, "amount", window="10s", hop="2s"),
        Feature("amount_mean_10s", Aggregation.MEAN, "amount", window="10s", hop="2s"),
        Feature("amount_min_6s", Aggregation.MIN, "amount", window="6s", hop="3s"),
        Feature("amount_max_6s", Aggregation.MAX, "amount", window="6s", hop="3s"),
        Feature("merchant_last", Aggregation.LAST, "merchant"),
    ),
    allowed_lateness_seconds=1,
    ttl_seconds=600,
)

VIEWS = [DRAIN_TXN]
