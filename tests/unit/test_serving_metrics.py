"""The endpoint's metrics: batched histogram observations equal one-by-one observations."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from freshet.serving.metrics import ServingMetrics, observe_many


def _histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("age_seconds", "age", ["view"], buckets=(0.1, 1, 10), registry=registry)


def test_observe_many_exposes_exactly_what_observe_would() -> None:
    values = [0.05, 0.1, 0.5, 1.0, 3.0, 10.0, 11.0, 250.0, -1.0]
    one, many = CollectorRegistry(), CollectorRegistry()
    child_one = _histogram(one).labels("v")
    for value in values:
        child_one.observe(value)
    observe_many(_histogram(many).labels("v"), values)
    assert _samples(many) == _samples(one)


def _samples(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_unregistered_views_share_one_label_so_label_sets_stay_bounded() -> None:
    metrics = ServingMetrics(["card_txn"])
    assert metrics.view_label("card_txn") == "card_txn"
    assert metrics.view_label("attacker-chosen-1") == "-"
    assert metrics.view_label(None) == "-"


def test_lookups_are_counted_by_result_with_ages_of_hits() -> None:
    metrics = ServingMetrics(["card_txn"])
    metrics.lookups_done("card_txn", hits=2, misses=1, expired=1, ages_s=[0.2, 40.0])
    text = metrics.exposition().decode()
    assert 'freshet_lookups_total{result="hit",view="card_txn"} 2.0' in text
    assert 'freshet_lookups_total{result="miss",view="card_txn"} 1.0' in text
    assert 'freshet_lookups_total{result="expired",view="card_txn"} 1.0' in text
    assert 'freshet_feature_age_seconds_bucket{le="0.25",view="card_txn"} 1.0' in text
    assert 'freshet_feature_age_seconds_count{view="card_txn"} 2.0' in text


def test_request_counts_are_batched_and_every_exposition_includes_them() -> None:
    metrics = ServingMetrics(["card_txn"], flush_interval_s=3600)
    for seconds in (0.0002, 0.0004, 0.02):
        metrics.request("/v1/features/{view}/{entity}", "card_txn", 200, seconds)
    series = 'route="/v1/features/{view}/{entity}",status="200",view="card_txn"} '
    assert "freshet_http_requests_total{" + series + "1.0" in _samples_text(metrics.registry)
    text = metrics.exposition().decode()
    assert "freshet_http_requests_total{" + series + "3.0" in text
    assert (
        'freshet_http_request_seconds_bucket{le="0.0005",route="/v1/features/{view}/{entity}",'
        'view="card_txn"} 2.0' in text
    )


def _samples_text(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()
