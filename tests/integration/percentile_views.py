"""A view of percentiles (``FRESHET_VIEWS``) for tests/integration/test_percentile_determinism.py:
the demo's transactions, whose hour windows and lifetime hold hundreds of amounts per card in
that test, past the exact range of ``freshet.engine.aggregations.Quantiles`` (so the sketch is
read)."""

from __future__ import annotations

from freshet.dsl.definitions import Aggregation, Feature, FeatureView
from freshet.dsl.views import CARD, CARD_TXN

PCT_TXN = FeatureView(
    name="pct_txn",
    version=1,
    entity=CARD,
    source=CARD_TXN.source,
    features=(
        Feature("txn_count_1h", Aggregation.COUNT, window="1h"),
        Feature("amount_p50_5m", Aggregation.APPROX_PERCENTILE, "amount", window="5m",
                quantile=0.5),
        Feature("amount_p50_1h", Aggregation.APPROX_PERCENTILE, "amount", window="1h",
                quantile=0.5),
        Feature("amount_p99_1h", Aggregation.APPROX_PERCENTILE, "amount", window="1h",
                quantile=0.99),
        Feature("amount_p90_life", Aggregation.APPROX_PERCENTILE, "amount", quantile=0.9),
    ),
    allowed_lateness_seconds=CARD_TXN.allowed_lateness_seconds,
    ttl_seconds=86_400,
    dead_letter_topic="pct_transactions_dlq",
)  # fmt: skip

VIEWS = [PCT_TXN]
