"""Feature services as definitions: checked when defined, resolved when registered (unknown
views, versions and features named), listed, and their derived features' null rules."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from freshet import FeatureService
from freshet.cli import cli
from freshet.dsl.definitions import Aggregation, DefinitionError, Entity, Feature, FeatureView
from freshet.dsl.registry import Registry, RegistryError, UnknownServiceError
from freshet.dsl.services import RequestValueError
from freshet.dsl.views import CARD_TXN, CARD_TXN_JSON

CARD_MERCHANT = FeatureView(
    name="card_merchant",
    version=1,
    entity=Entity("card_merchant", key=("card_id", "merchant")),
    source=CARD_TXN.source,
    features=(
        Feature("txn_count_1h", Aggregation.COUNT, window="1h"),
        Feature("amount_sum_1h", Aggregation.SUM, "amount", window="1h"),
        Feature("amounts", Aggregation.LAST_K, "amount", k=3),
    ),
)
V2 = replace(
    CARD_TXN,
    version=2,
    features=(*CARD_TXN.features, Feature("amount_min_1h", Aggregation.MIN, "amount", window="1h")),
)
FRAUD_V1 = FeatureService(
    name="fraud_v1",
    features=("card_txn:txn_count_5m", "card_txn:amount_mean_1h", "card_merchant:*"),
    request=("amount",),
    derived={"amount_vs_mean": "request.amount / card_txn.amount_mean_1h"},
)


def _registry(*extra: Any) -> Registry:
    registry = Registry([CARD_TXN, CARD_TXN_JSON, CARD_MERCHANT])
    for item in extra:
        if isinstance(item, FeatureService):
            registry.add_service(item)
        else:
            registry.add(item)
    return registry


def test_the_issues_service_resolves_to_its_columns_keys_and_views() -> None:
    plan = _registry().add_service(FRAUD_V1)
    assert plan.columns == (
        "card_txn__txn_count_5m",
        "card_txn__amount_mean_1h",
        "card_merchant__txn_count_1h",
        "card_merchant__amount_sum_1h",
        "card_merchant__amounts",
        "amount_vs_mean",
    )
    assert plan.keys == ("card_id", "merchant")
    assert [(v.name, v.version, v.ref) for v in plan.views] == [
        ("card_txn", 1, "card_txn@1"),
        ("card_merchant", 1, "card_merchant@1"),
    ]
    assert plan.request == (("amount", "float64"),)
    assert FRAUD_V1.to_json()["derived"] == {
        "amount_vs_mean": "request.amount / card_txn.amount_mean_1h"
    }
    listed = plan.to_json()
    assert listed["columns"][-1] == {"name": "amount_vs_mean", "type": "float64"}
    assert listed["views"][0] == {
        "name": "card_txn",
        "version": 1,
        "features": ["txn_count_5m", "amount_mean_1h"],
    }
    orjson.dumps(listed)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"amount": 120.0, "card_txn__amount_mean_1h": 40.0}, 3.0),
        ({"amount": 120.0, "card_txn__amount_mean_1h": None}, None),  # missing feature: null
        ({"amount": None, "card_txn__amount_mean_1h": 40.0}, None),  # null request field
        ({"amount": 5.0, "card_txn__amount_mean_1h": 0.0}, None),  # division by zero: null
        ({"amount": -0.0, "card_txn__amount_mean_1h": 2.0}, -0.0),
    ],
)
def test_derived_features_follow_the_expression_null_rules(
    row: dict[str, Any], expected: float | None
) -> None:
    plan = _registry().add_service(FRAUD_V1)
    assert plan.derive(row) == [expected]


def test_request_fields_take_a_mapping_of_types_and_values_are_checked_against_them() -> None:
    service = FeatureService(
        name="typed",
        features=("card_txn:merchant_last",),
        request={"n": "int64", "x": "float64", "s": "string", "b": "bool"},
        derived={
            "same_merchant": "request.s == card_txn.merchant_last",
            "score": "request.n * 2 + request.x if request.b else 0.0",
        },
    )
    plan = _registry().add_service(service)
    assert [d.type for d in plan.derived] == ["bool", "float64"]
    assert plan.request_value("x", "float64", 3) == 3.0
    assert isinstance(plan.request_value("x", "float64", 3), float)
    assert plan.request_value("n", "int64", None) is None
    for name, kind, value in [
        ("n", "int64", 1.5),
        ("n", "int64", True),
        ("x", "float64", "1"),
        ("s", "string", 1),
        ("b", "bool", 1),
        ("n", "int64", 2**63),
    ]:
        with pytest.raises(RequestValueError, match=name):
            plan.request_value(name, kind, value)
    row = {"card_txn__merchant_last": "m1", "n": 2, "x": 0.5, "s": "m1", "b": True}
    assert plan.derive(row) == [True, 4.5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Fraud"}, "FeatureService.name='Fraud' is not a valid name"),
        ({"features": ()}, "must be a non-empty sequence"),
        ({"features": "card_txn:txn_count_5m"}, "must be a non-empty sequence"),
        ({"features": ("card_txn.txn_count_5m",)}, "'card_txn.txn_count_5m' is not 'view:feature'"),
        ({"features": ("card_txn@0:txn_count_5m",)}, "versions start at 1"),
        ({"features": ("card_txn:a", "card_txn:a")}, "'card_txn:a' is listed twice"),
        ({"request": "amount"}, "request='amount' must be a sequence"),
        ({"request": {"amount": "float32"}}, "type 'float32'; types: int64, float64"),
        ({"request": ("amount", "amount")}, "request field 'amount' is declared twice"),
        ({"request": ("Amount",)}, "request field='Amount' is not a valid name"),
        ({"derived": {"x": 1}}, "derived feature 'x' must be an expression string"),
        ({"derived": {"x": "1 +"}}, "derived feature 'x': '1 +' is not an expression"),
        ({"derived": {"a__b": "1"}}, "'__' is kept for <view>__<feature>"),
        ({"request": ("x",), "derived": {"x": "1"}}, "'x' is already a request field"),
    ],
)
def test_mistakes_fail_when_the_service_is_defined(kwargs: dict[str, Any], message: str) -> None:
    definition: dict[str, Any] = {"name": "svc", "features": ("card_txn:txn_count_5m",)}
    with pytest.raises(DefinitionError, match=_escape(message)):
        FeatureService(**{**definition, **kwargs})


def _escape(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize(
    ("features", "derived", "message"),
    [
        (("nope:a",), {}, "feature 'nope:a': unknown view 'nope'; known: card_txn"),
        (("card_txn@7:txn_count_5m",), {}, "unknown version 7 of view 'card_txn'"),
        (("card_txn:zzz",), {}, "view 'card_txn' (version 2) has no feature 'zzz'; its features"),
        (
            ("card_txn@1:txn_count_5m", "card_txn@2:amount_min_1h"),
            {},
            "view 'card_txn' is used at versions 1 and 2",
        ),
        (
            ("card_txn:txn_count_5m",),
            {"x": "card_txn.amount_sum_1h + 1"},
            "'card_txn.amount_sum_1h' is not a known name",  # not among the service's features
        ),
        (
            ("card_merchant:*",),
            {"x": "card_merchant.amounts"},
            "'card_merchant.amounts' is not a known name",  # list features are not expressible
        ),
        (
            ("card_txn:merchant_last",),
            {"x": "card_txn.merchant_last / 2"},
            "derived feature 'x'",
        ),
        (("card_txn:txn_count_5m",), {"card_id": "1"}, "'card_id' is a key field's name"),
    ],
)
def test_registration_names_unknown_views_versions_features_and_bad_expressions(
    features: tuple[str, ...], derived: dict[str, str], message: str
) -> None:
    registry = _registry(V2)
    service = FeatureService(name="svc", features=features, derived=derived)
    with pytest.raises(DefinitionError, match=_escape(message)):
        registry.add_service(service)
    with pytest.raises(UnknownServiceError, match="unknown service 'svc'; known: "):
        registry.get_service("svc")


def test_a_request_field_cannot_also_be_a_key_field() -> None:
    service = FeatureService(name="svc", features=("card_txn:txn_count_5m",), request=("card_id",))
    with pytest.raises(DefinitionError, match="'card_id' are key fields"):
        _registry().add_service(service)


def test_an_unpinned_feature_reads_the_newest_version_and_a_pinned_one_its_version() -> None:
    registry = _registry(V2)
    newest = registry.add_service(FeatureService(name="a", features=("card_txn:amount_min_1h",)))
    pinned = registry.add_service(FeatureService(name="b", features=("card_txn@1:txn_count_5m",)))
    assert newest.views[0].ref == "card_txn@2"
    assert pinned.views[0].ref == "card_txn@1"
    # a view version registered later is read by unpinned services from then on
    registry = _registry()
    plan = registry.add_service(FeatureService(name="a", features=("card_txn:txn_count_5m",)))
    assert plan.views[0].version == 1
    registry.add(V2)
    assert registry.get_service("a").views[0].version == 2


def test_registering_another_definition_under_a_services_name_is_refused() -> None:
    registry = _registry(FRAUD_V1)
    registry.add_service(FRAUD_V1)  # the same again: a no-op
    with pytest.raises(RegistryError, match="service 'fraud_v1' is already registered"):
        registry.add_service(replace(FRAUD_V1, request=("amount", "other")))


def test_views_modules_provide_services_checked_after_every_modules_views(
    tmp_path: Path,
) -> None:
    (tmp_path / "views_a.py").write_text(
        "from freshet import FeatureService\n"
        "FRAUD = FeatureService(name='fraud', features=('card_merchant:txn_count_1h',))\n"
    )
    (tmp_path / "views_b.py").write_text(
        "from freshet import Aggregation, Entity, Feature, FeatureView\n"
        "from freshet.dsl.views import CARD_TXN\n"
        "CARD_MERCHANT = FeatureView(name='card_merchant', version=1,\n"
        "    entity=Entity('card_merchant', key=('card_id', 'merchant')), source=CARD_TXN.source,\n"
        "    features=(Feature('txn_count_1h', Aggregation.COUNT, window='1h'),))\n"
    )
    registry = Registry()
    registry.load({"FRESHET_VIEWS": f"{tmp_path / 'views_a.py'},{tmp_path / 'views_b.py'}"})
    assert registry.get_service("fraud").columns == ("card_merchant__txn_count_1h",)
    (tmp_path / "views_c.py").write_text(
        "from freshet import FeatureService\n"
        "SERVICES = [FeatureService(name='bad', features=('nowhere:x',))]\n"
    )
    with pytest.raises(DefinitionError, match="service 'bad': feature 'nowhere:x': unknown view"):
        Registry().load({"FRESHET_VIEWS": str(tmp_path / "views_c.py")})


def test_freshet_views_lists_services_in_the_table_and_with_services_json(
    tmp_path: Path,
) -> None:
    module = tmp_path / "svc_views.py"
    module.write_text(
        "from freshet import Aggregation, Entity, Feature, FeatureService, FeatureView\n"
        "from freshet.dsl.views import CARD_TXN\n"
        "VIEWS = [CARD_TXN]\n"
        "SERVICES = [FeatureService(name='fraud_v1', features=('card_txn:amount_mean_1h',),\n"
        "    request=('amount',), derived={'ratio': 'request.amount / card_txn.amount_mean_1h'})]\n"
    )
    code = "import sys; from freshet.cli import main; sys.exit(main())"  # a fresh registry
    import subprocess
    import sys

    env = {"FRESHET_VIEWS": str(module), "COLUMNS": "160", "PATH": ""}
    listed = subprocess.run(
        [sys.executable, "-c", code, "views", "--services", "--json"],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    (service,) = orjson.loads(listed.stdout)
    assert service["name"] == "fraud_v1"
    assert service["derived"] == {"ratio": "request.amount / card_txn.amount_mean_1h"}
    views_only = subprocess.run(
        [sys.executable, "-c", code, "views", "--json"],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert [v["name"] for v in orjson.loads(views_only.stdout)] == ["card_txn"]  # a list, as before
    table = subprocess.run(
        [sys.executable, "-c", code, "views"], env=env, capture_output=True, check=True, timeout=60
    )
    text = table.stdout.decode()
    assert "service fraud_v1" in text
    assert "card_txn__amount_mean_1h" in text
    assert "ratio" in text
    assert CliRunner().invoke(cli, ["views", "--help"]).output.count("--services") == 1
