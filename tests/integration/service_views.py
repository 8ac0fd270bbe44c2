"""Views and a feature service (``FRESHET_VIEWS``) for the feature-service tests: the demo's
``card_txn``, a ``card_merchant`` view keyed by card and merchant over the same transactions,
and the service ``fraud_v1`` reading both, with a request field and a derived feature."""

from __future__ import annotations

from freshet import Aggregation, Entity, Feature, FeatureService, FeatureView
from freshet.dsl.views import CARD_TXN

CARD_MERCHANT = FeatureView(
    name="card_merchant",
    version=1,
    entity=Entity("card_merchant", key=("card_id", "merchant")),
    source=CARD_TXN.source,
    features=(
        Feature("txn_count_1h", Aggregation.COUNT, window="1h"),
        Feature("amount_sum_1h", Aggregation.SUM, "amount", window="1h"),
    ),
    allowed_lateness_seconds=5,
    ttl_seconds=86_400,
    dead_letter_topic="card_merchant_dlq",
)

FRAUD_V1 = FeatureService(
    name="fraud_v1",
    features=("card_txn:txn_count_5m", "card_txn:amount_mean_1h", "card_merchant:*"),
    request=("amount",),
    derived={"amount_vs_mean": "request.amount / card_txn.amount_mean_1h"},
)

VIEWS = [CARD_TXN, CARD_MERCHANT]
SERVICES = [FRAUD_V1]
