"""Views and the feature service of ``bench_services.py`` (``FRESHET_VIEWS``): the demo views
and a ``card_merchant`` view keyed by card and merchant; ``bench3`` reads all three."""

from __future__ import annotations

from freshet import Aggregation, Entity, Feature, FeatureService, FeatureView
from freshet.dsl.views import CARD_TXN, CARD_TXN_JSON

CARD_MERCHANT = FeatureView(
    name="card_merchant",
    version=1,
    entity=Entity("card_merchant", key=("card_id", "merchant")),
    source=CARD_TXN.source,
    features=(
        Feature("txn_count_1h", Aggregation.COUNT, window="1h"),
        Feature("amount_sum_1h", Aggregation.SUM, "amount", window="1h"),
    ),
)

BENCH3 = FeatureService(
    name="bench3",
    features=(
        "card_txn:txn_count_5m",
        "card_txn:amount_mean_1h",
        "card_txn_json:amount_sum_1h",
        "card_merchant:*",
    ),
    request=("amount",),
    derived={"amount_vs_mean": "request.amount / card_txn.amount_mean_1h"},
)

VIEWS = [CARD_TXN, CARD_TXN_JSON, CARD_MERCHANT]
SERVICES = [BENCH3]
