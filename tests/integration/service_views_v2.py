"""Version 2 of ``card_txn`` (``FRESHET_VIEWS``, next to ``service_views.py``): a new feature
set under a new Redis key space, while version 1 is still served as ``card_txn@1``; and a
service pinned to version 1."""

from __future__ import annotations

import dataclasses

from freshet import Aggregation, Feature, FeatureService
from freshet.dsl.views import CARD_TXN, CARD_TXN_FEATURES

CARD_TXN_V2 = dataclasses.replace(
    CARD_TXN,
    version=2,
    features=(*CARD_TXN_FEATURES, Feature("amount_min_1h", Aggregation.MIN, "amount", window="1h")),
)

FRAUD_PINNED = FeatureService(
    name="fraud_pinned",
    features=("card_txn@1:txn_count_5m", "card_merchant:txn_count_1h"),
    derived={"per_merchant": "card_merchant.txn_count_1h / card_txn.txn_count_5m"},
)

VIEWS = [CARD_TXN_V2]
SERVICES = [FRAUD_PINNED]
