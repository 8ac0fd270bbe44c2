"""The definitions DSL, the registry and ``freshet views``: what users write and read."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from freshet.cli import cli
from freshet.dsl.definitions import (
    Aggregation,
    DefinitionError,
    Entity,
    Feature,
    FeatureView,
    Source,
    default_hop_seconds,
    parse_duration,
)
from freshet.dsl.registry import UnknownViewError, all_views, get_view, views_json
from freshet.dsl.views import CARD_TXN, CARD_TXN_JSON

SOURCE = Source(topic="transactions", encoding="avro", schema="transaction.avsc",
                event_time_field="ts")  # fmt: skip


def _view(*features: Feature, **overrides: Any) -> FeatureView:
    fields: dict[str, Any] = {
        "name": "v",
        "version": 1,
        "entity": Entity(name="card", key="card_id"),
        "source": SOURCE,
        "features": features or (Feature("n", Aggregation.COUNT, window="5m"),),
    }
    fields.update(overrides)
    return FeatureView(**fields)


def test_demo_views_have_the_documented_features_windows_and_hops() -> None:
    expected = [
        ("txn_count_5m", "count", None, 300, 10),
        ("amount_sum_1h", "sum", "amount", 3600, 60),
        ("amount_mean_1h", "mean", "amount", 3600, 60),
        ("amount_max_24h", "max", "amount", 86_400, 900),
        ("merchant_last", "last", "merchant", None, None),
        ("merchant_distinct_24h", "distinct_count", "merchant", 86_400, 900),
    ]
    for view in (CARD_TXN, CARD_TXN_JSON):
        got = [(f.name, f.agg.value, f.field, f.window_seconds, f.hop_seconds)
               for f in view.features]  # fmt: skip
        assert got == expected
        assert view.entity.key == "card_id"
        assert view.source.event_time_field == "ts"
        assert view.source.schema_path == Path(__file__).parents[2] / "schemas/transaction.avsc"
        assert view.input_fields == ("amount", "merchant")
    assert (CARD_TXN.source.topic, CARD_TXN.source.encoding) == ("transactions", "avro")
    assert (CARD_TXN_JSON.source.topic, CARD_TXN_JSON.source.encoding) == (
        "transactions_json",
        "json",
    )


def test_layout_types_follow_the_aggregation_and_the_field() -> None:
    layout = CARD_TXN.layout()
    assert layout.entity == "card_id"
    assert [(c.name, c.type) for c in layout.features] == [
        ("txn_count_5m", "int64"),
        ("amount_sum_1h", "float64"),
        ("amount_mean_1h", "float64"),
        ("amount_max_24h", "float64"),
        ("merchant_last", "string"),
        ("merchant_distinct_24h", "int64"),
    ]
    int_sum = _view(Feature("ts_sum", Aggregation.SUM, "ts", window="1h"))
    assert int_sum.layout().features[0].type == "int64"


@pytest.mark.parametrize(
    ("window", "hop"),
    [(30, 1), (300, 10), (600, 10), (3600, 60), (7200, 60), (86_400, 900), (604_800, 3600),
     (10, 1)],
)  # fmt: skip
def test_default_hops_split_windows_into_at_least_30_tiles(window: int, hop: int) -> None:
    assert default_hop_seconds(window) == hop


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86_400), (90, 90)]
)
def test_durations_parse_from_strings_and_seconds(text: str | int, seconds: int) -> None:
    assert parse_duration(text, what="window") == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "0s", "-1m", "1w", 0, -5, True, "m5"])
def test_bad_durations_name_the_value_and_the_accepted_forms(bad: Any) -> None:
    with pytest.raises(DefinitionError, match=r"window=.*(duration|positive)"):
        parse_duration(bad, what="window")


def test_a_hop_override_replaces_the_default() -> None:
    feature = Feature("n", Aggregation.COUNT, window="1h", hop="5m")
    assert (feature.window_seconds, feature.hop_seconds) == (3600, 300)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Feature("n", "avg", "amount", window="5m"),  # type: ignore[arg-type]
         r"agg='avg' is not an aggregation; allowed: count, sum, mean, min, max, last, "
         r"distinct_count, approx_percentile"),
        (lambda: Feature("n", Aggregation.COUNT, window="5m", hop="7s"),
         r"window 300s is not a multiple of hop='7s' \(7s\); use a hop that divides"),
        (lambda: Feature("n", Aggregation.COUNT, "amount", window="5m"),
         r"count takes no field"),
        (lambda: Feature("s", Aggregation.SUM, window="5m"), r"sum needs a field"),
        (lambda: Feature("p", Aggregation.APPROX_PERCENTILE, "amount", window="5m"),
         r"approx_percentile needs quantile in \[0, 1\]"),
        (lambda: Feature("p", Aggregation.APPROX_PERCENTILE, "amount", quantile=1.5),
         r"needs quantile in \[0, 1\]; got 1.5"),
        (lambda: Feature("m", Aggregation.MAX, "amount", quantile=0.5),
         r"quantile=0.5 is only allowed with approx_percentile"),
        (lambda: Feature("l", Aggregation.LAST_K, "merchant", window="1h"),
         r"last_k needs k, an int from 1 to 100; got k=None"),
        (lambda: Feature("l", Aggregation.TOP_K, "merchant", window="1h", k=101),
         r"top_k needs k, an int from 1 to 100; got k=101"),
        (lambda: Feature("l", Aggregation.LAST, "merchant", k=3),
         r"k=3 is only allowed with last_k and top_k"),
        (lambda: Feature("n", Aggregation.COUNT, hop="10s"), r"hop='10s' needs a window"),
        (lambda: Feature("Bad-Name", Aggregation.COUNT), r"Feature.name='Bad-Name'"),
        (lambda: Source(topic="t", encoding="xml", schema="transaction.avsc",  # type: ignore[arg-type]
                        event_time_field="ts"),
         r"Source.encoding='xml' is not supported; allowed: avro, json"),
        (lambda: Source(topic="t", encoding="avro", schema="missing.avsc", event_time_field="ts"),
         r"Source.schema='missing.avsc': no such file; tried .*missing.avsc"),
        (lambda: Source(topic="t", encoding="avro", schema="transaction.avsc",
                        event_time_field="amount"),
         r"event_time_field='amount' must be a long .* its long fields: ts"),
        (lambda: Source(topic="bad topic", encoding="avro", schema="transaction.avsc",
                        event_time_field="ts"),
         r"Source.topic='bad topic' is not a valid Kafka topic name"),
        (lambda: _view(Feature("s", Aggregation.SUM, "price", window="1h")),
         r"reads field 'price', which transaction.avsc lacks; usable fields: card_id, amount, "
         r"merchant, ts"),
        (lambda: _view(Feature("s", Aggregation.SUM, "merchant", window="1h")),
         r"sum needs a numeric field, 'merchant' is a string; numeric fields: amount, ts"),
        (lambda: _view(Feature("n", Aggregation.COUNT), Feature("n", Aggregation.COUNT)),
         r"feature name 'n' is used twice"),
        (lambda: _view(entity=Entity(name="card", key="amount")),
         r"entity key 'amount' must be a string or long field"),
        (lambda: _view(version=0), r"version=0 must be an int >= 1"),
        (lambda: _view(allowed_lateness_seconds=-1), r"allowed_lateness_seconds=-1 must be"),
        (lambda: _view(ttl_seconds="1d"), r"ttl_seconds='1d' must be an int of seconds"),
        (lambda: _view(features=()), r"features must be a non-empty sequence of Feature"),
        (lambda: _view(dead_letter_topic="dlq topic"), r"dead_letter_topic='dlq topic'"),
        (lambda: _view(Feature("n", Aggregation.COUNT, window="1m"), allowed_lateness_seconds=61),
         r"allowed_lateness_seconds=61 exceeds the shortest window \(60 s\)"),
    ],
)  # fmt: skip
def test_invalid_definitions_fail_when_defined_naming_the_bad_value(
    make: Any, message: str
) -> None:
    with pytest.raises(DefinitionError, match=message):
        make()


def test_definitions_are_frozen_and_hashable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CARD_TXN.ttl_seconds = 0  # type: ignore[misc]
    assert {CARD_TXN: 1}[CARD_TXN] == 1
    assert CARD_TXN != CARD_TXN_JSON


def test_registry_finds_views_and_names_the_known_ones_when_it_cannot() -> None:
    assert get_view("card_txn") is CARD_TXN
    assert all_views() == (CARD_TXN, CARD_TXN_JSON)
    with pytest.raises(UnknownViewError) as caught:
        get_view("user_txn2")
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == "unknown view 'user_txn2'; known: card_txn, card_txn_json"


def test_views_json_describes_source_lateness_ttl_and_every_feature() -> None:
    (card, card_json) = views_json()
    assert card["name"] == "card_txn"
    assert card["entity"] == "card_id"
    assert card["source"] == {
        "topic": "transactions",
        "encoding": "avro",
        "schema": "schemas/transaction.avsc",
        "event_time_field": "ts",
    }
    assert card_json["source"]["encoding"] == "json"
    assert card["allowed_lateness_seconds"] == CARD_TXN.allowed_lateness_seconds
    assert card["ttl_seconds"] == CARD_TXN.ttl_seconds
    assert card["features"][3] == {
        "name": "amount_max_24h",
        "aggregation": "max",
        "field": "amount",
        "window_seconds": 86_400,
        "hop_seconds": 900,
        "quantile": None,
        "k": None,
        "where": None,
        "type": "float64",
    }
    orjson.dumps(views_json())  # JSON-able as is


def test_freshet_views_prints_json_and_a_table() -> None:
    runner = CliRunner()
    as_json = runner.invoke(cli, ["views", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert orjson.loads(as_json.output) == views_json()
    table = runner.invoke(cli, ["views"], env={"COLUMNS": "120"})
    assert table.exit_code == 0, table.output
    for view in all_views():
        assert view.name in table.output
        for feature in view.features:
            assert feature.name in table.output
    assert "15m" in table.output  # the 24 h features' hop


# --- where a relative schema= is found -------------------------------------------------------

_SCHEMA = {
    "type": "record",
    "name": "Payment",
    "fields": [
        {"name": "user_id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}


def _load_module(path: Path) -> Any:
    """Import ``path`` as a module of its own, as FRESHET_VIEWS does with a file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"views_{path.parent.name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _views_module(directory: Path, schema: str, key: str = "user_id") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    module = directory / "my_views.py"
    module.write_text(
        "from freshet.dsl.definitions import Aggregation, Entity, Feature, FeatureView, Source\n"
        "VIEW = FeatureView(name='user_payments', version=1,\n"
        f"    entity=Entity(name='user', key={key!r}),\n"
        f"    source=Source(topic='payments', encoding='json', schema={schema!r},\n"
        "                  event_time_field='ts'),\n"
        "    features=(Feature('amount_sum_1h', Aggregation.SUM, 'amount', window='1h'),))\n"
    )
    return module


def test_a_relative_schema_is_read_beside_the_module_that_defines_the_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "team" / "schemas").mkdir(parents=True)
    (tmp_path / "team" / "schemas" / "payment.avsc").write_text(orjson.dumps(_SCHEMA).decode())
    module = _views_module(tmp_path / "team", "schemas/payment.avsc")
    monkeypatch.chdir(tmp_path)  # not where the schema is: the module's directory counts

    view = _load_module(module).VIEW

    assert view.source.schema_path == tmp_path / "team" / "schemas" / "payment.avsc"
    assert view.source.field_types == {"user_id": "string", "amount": "float64", "ts": "int64"}
    assert view.to_json()["source"]["schema"] == str(view.source.schema_path)


def test_replacing_the_topic_elsewhere_keeps_the_schema_found_beside_the_view(
    tmp_path: Path,
) -> None:
    # `freshet run VIEW --topic T` does this replace in freshet.cli.run, far from the module.
    (tmp_path / "payment.avsc").write_text(orjson.dumps(_SCHEMA).decode())
    view = _load_module(_views_module(tmp_path, "payment.avsc")).VIEW

    moved = dataclasses.replace(view, source=dataclasses.replace(view.source, topic="other"))

    assert moved.source.topic == "other"
    assert moved.source.schema_path == tmp_path / "payment.avsc"


def test_a_schema_not_beside_the_module_is_one_of_the_shipped_schemas(tmp_path: Path) -> None:
    view = _load_module(_views_module(tmp_path, "transaction.avsc", key="card_id"))

    shipped = Path(__file__).parents[2] / "schemas" / "transaction.avsc"
    assert view.VIEW.source.schema_path == shipped
    assert CARD_TXN.source.schema_path == shipped


def test_a_missing_schema_names_every_path_tried(tmp_path: Path) -> None:
    module = _views_module(tmp_path, "payment.avsc")

    with pytest.raises(DefinitionError) as info:
        _load_module(module)

    message = str(info.value)
    assert "Source.schema='payment.avsc': no such file" in message
    assert str(tmp_path / "payment.avsc") in message
    assert str(Path(__file__).parents[2] / "schemas" / "payment.avsc") in message


def test_an_absolute_schema_path_and_an_explicit_base_dir_are_used_as_given(
    tmp_path: Path,
) -> None:
    (tmp_path / "payment.avsc").write_text(orjson.dumps(_SCHEMA).decode())

    absolute = Source(topic="p", encoding="json", schema=tmp_path / "payment.avsc",
                      event_time_field="ts")  # fmt: skip
    based = Source(topic="p", encoding="json", schema="payment.avsc", event_time_field="ts",
                   base_dir=tmp_path)  # fmt: skip

    assert absolute.schema_path == based.schema_path == tmp_path / "payment.avsc"


# --- computed columns, filters, composite keys (expressions are checked when defined) -----------


@pytest.mark.parametrize(
    ("columns", "where", "message"),
    [
        ({"x": "price * 2"}, None,
         r"column 'x': .price \* 2.: unknown name 'price'.*amount"),
        ({"x": "amount > 'x'"}, None,
         r"column 'x': .amount > 'x'.: cannot compare float64 with string"),
        ({"x": "exp(amount)"}, None, r"column 'x': .exp\(amount\).: .*exp"),
        ({"x": "__import__('os')"}, None, r"column 'x': .*__import__"),
        ({"x": "amount.real"}, None, r"column 'x': .amount.real.: attribute access"),
        ({}, "amount + 1", r"where='amount \+ 1' is float64, not a condition"),
        ({}, "merchant == 3", r"where: .merchant == 3.: cannot compare string with int64"),
        ({"amount": "1.0"}, None, r"column 'amount' is already a field"),
    ],
)  # fmt: skip
def test_bad_expressions_are_refused_when_the_view_is_defined_naming_them(
    columns: dict[str, str], where: str | None, message: str
) -> None:
    with pytest.raises(DefinitionError, match=message):
        _view(Feature("n", Aggregation.COUNT, window="5m", where=where), columns=columns)


def test_a_feature_may_read_a_column_and_filters_are_shared_per_text() -> None:
    view = _view(
        Feature("big_n", Aggregation.COUNT, window="1h", where="big"),
        Feature("big_sum", Aggregation.SUM, "cents", window="1h", where="big"),
        Feature("ratio_mean", Aggregation.MEAN, "ratio", window="1h"),
        columns={"big": "amount >= 100.0", "cents": "round(amount * 100)",
                 "ratio": "amount / cents"},
    )  # fmt: skip
    assert view.columns == (
        ("big", "amount >= 100.0"),
        ("cents", "round(amount * 100)"),
        ("ratio", "amount / cents"),
    )
    assert view.input_fields == ("amount",)  # what the decoder reads
    assert view.layout().features[1].type == "int64"
    # cents and ratio can be null (round of a huge float, division by zero): their features
    # skip nulls through a filter; big_n's filter is just `big`.
    filters = dict(zip((f.name for f in view.features), view.feature_filters, strict=True))
    texts = {name: e.text for name, e in view.expressions}
    assert texts[filters["big_n"]] == "(big)"
    assert texts[filters["big_sum"]] == "(big) and cents is not None"
    assert texts[filters["ratio_mean"]] == "ratio is not None"


def test_a_boolean_column_is_for_filters_not_for_aggregating() -> None:
    with pytest.raises(DefinitionError, match="'big' is a boolean; count it with where='big'"):
        _view(Feature("s", Aggregation.MAX, "big", window="1h"), columns={"big": "amount > 1"})


def test_composite_keys_have_one_to_four_distinct_fields_of_the_schema() -> None:
    view = _view(entity=Entity("card_merchant", key=("card_id", "merchant")))
    layout = view.layout()
    assert (layout.keys, layout.key_types, layout.entity) == (
        ("card_id", "merchant"), ("string", "string"), "card_id|merchant"
    )  # fmt: skip
    assert view.to_json()["key"] == ["card_id", "merchant"]
    assert Entity("card", key=("card_id",)).key == "card_id"  # one field: as key="card_id"
    with pytest.raises(DefinitionError, match="1 to 4 fields"):
        Entity("e", key=("a", "b", "c", "d", "e"))
    with pytest.raises(DefinitionError, match="names a field twice"):
        Entity("e", key=("card_id", "card_id"))
    with pytest.raises(DefinitionError, match="entity key 'amount' must be a string or long"):
        _view(entity=Entity("e", key=("card_id", "amount")))
