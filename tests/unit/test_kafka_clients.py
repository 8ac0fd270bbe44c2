"""Kafka clients (``freshet.stream.kafka_clients``): librdkafka's log rate-limited through Python
logging, transient consumer errors retried, every client made by the one factory; and the one-line
report of ``freshet.cli.main``. No broker: the clients are never connected."""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from freshet.cli import EXIT_UNREACHABLE, _debug_first, _report
from freshet.sinks.settings import Settings, SettingsError
from freshet.stream import kafka_clients
from freshet.stream.connectors import _KafkaPartition
from freshet.stream.kafka_clients import KafkaUnreachable, RateLimit

REPO = Path(__file__).resolve().parents[2]
FAIL = "FAIL [rdkafka#consumer-{n}] [thrd:127.0.0.1:9092/1]: Connect to 127.0.0.1:9092 failed: "


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def limited() -> tuple[logging.Logger, _Records, _Clock]:
    clock = _Clock()
    logger = logging.getLogger(f"test.kafka.{id(clock)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addFilter(RateLimit(30.0, clock=clock))
    records = _Records()
    logger.addHandler(records)
    return logger, records, clock


def _librdkafka(logger: logging.Logger, fac: str, client: str, text: str) -> None:
    """What confluent-kafka does with each librdkafka log line."""
    logger.log(logging.ERROR, "%s [%s] %s", fac, client, text)


def test_the_same_message_passes_once_per_period_then_says_how_many_were_held_back(
    limited: tuple[logging.Logger, _Records, _Clock],
) -> None:
    logger, records, clock = limited
    for i in range(600):  # 20 a second for 30 s, as librdkafka does while a broker is down
        _librdkafka(logger, "REQTMOUT", "rdkafka#consumer-1", f"timed out after {i % 3}ms")
        clock.now += 0.05
    assert records.lines == ["REQTMOUT [rdkafka#consumer-1] timed out after 0ms"]
    clock.now += 0.1
    _librdkafka(logger, "REQTMOUT", "rdkafka#consumer-1", "timed out after 1ms")
    assert records.lines[1] == (
        "REQTMOUT [rdkafka#consumer-1] timed out after 1ms (+599 like it in the last 30 s)"
    )


def test_different_messages_are_limited_separately(
    limited: tuple[logging.Logger, _Records, _Clock],
) -> None:
    logger, records, _ = limited
    for _ in range(3):
        logger.warning("topic %s: offset reset", "a")
        logger.warning("topic %s: offset reset", "b")
    assert records.lines == ["topic a: offset reset", "topic b: offset reset"]


def test_connection_failures_of_every_client_and_broker_are_one_message(
    limited: tuple[logging.Logger, _Records, _Clock],
) -> None:
    logger, records, clock = limited
    for n in range(5):
        _librdkafka(logger, "FAIL", f"rdkafka#consumer-{n}", f"127.0.0.{n}:9092/{n}: refused")
        _librdkafka(logger, "FAIL", f"rdkafka#producer-{n}", "127.0.0.1:9092/bootstrap: refused")
        logger.warning("Kafka: %s", "1/1 brokers are down", extra={"kafka_key": "kafka connection"})
    # One line for the outage: librdkafka's FAIL logs and the error callback's messages alike.
    assert records.lines == ["FAIL [rdkafka#consumer-0] 127.0.0.0:9092/0: refused"]
    clock.now += 31
    _librdkafka(logger, "FAIL", "rdkafka#consumer-9", "127.0.0.1:9092/1: refused")
    assert records.lines[-1].endswith("(+14 like it in the last 31 s)")


def test_the_limiter_remembers_a_bounded_number_of_messages() -> None:
    clock = _Clock()
    limit = RateLimit(30.0, clock=clock, max_keys=10)
    logger = logging.getLogger("test.kafka.bounded")
    for i in range(1000):
        record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "m", None, None)
        record.kafka_key = f"key {i}"
        assert limit.filter(record)
    assert len(limit._seen) <= 10


def test_the_shared_logger_is_limited_and_every_client_config_carries_it() -> None:
    config = kafka_clients.client_config({"bootstrap.servers": "127.0.0.1:9"})
    assert config["logger"] is logging.getLogger(kafka_clients.LOGGER_NAME)
    assert any(isinstance(f, RateLimit) for f in config["logger"].filters)
    assert callable(config["error_cb"])
    own = logging.getLogger("mine")
    assert kafka_clients.client_config({"logger": own})["logger"] is own


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (KafkaError._TRANSPORT, True),
        (KafkaError._ALL_BROKERS_DOWN, True),
        (KafkaError._TIMED_OUT, True),
        (KafkaError.LEADER_NOT_AVAILABLE, True),
        (KafkaError.NOT_LEADER_FOR_PARTITION, True),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, False),
        (KafkaError.OFFSET_OUT_OF_RANGE, False),
    ],
)
def test_transient_consumer_errors(code: int, transient: bool) -> None:
    assert kafka_clients.is_transient(KafkaError(code)) is transient


def test_a_fatal_error_is_never_transient() -> None:
    assert not kafka_clients.is_transient(KafkaError(KafkaError._TRANSPORT, "x", fatal=True))


class _Message:
    def __init__(self, offset: int, error: KafkaError | None = None) -> None:
        self._offset = offset
        self._error = error

    def error(self) -> KafkaError | None:
        return self._error

    def offset(self) -> int:
        return self._offset


def _partition() -> Any:
    part = object.__new__(_KafkaPartition)  # no consumer: only _without_errors is exercised
    part._topic, part._idx, part._eof = "transactions", 2, False
    return part


def test_the_flow_source_drops_transient_errors_and_keeps_the_records_around_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    part = _partition()
    lost = KafkaError(KafkaError._TRANSPORT, "127.0.0.1:9092/1: Disconnected")
    batch = [_Message(7), _Message(-1, lost), _Message(8)]
    with caplog.at_level(logging.WARNING, logger=kafka_clients.LOGGER_NAME):
        kept = part._without_errors(batch)
    assert [m.offset() for m in kept] == [7, 8]
    assert not part._eof
    assert "reading transactions[2]: 127.0.0.1:9092/1: Disconnected (_TRANSPORT); retrying" in (
        caplog.text
    )


def test_the_flow_source_still_stops_on_other_errors_and_at_the_end_of_a_partition() -> None:
    part = _partition()
    with pytest.raises(RuntimeError, match=r"error consuming from Kafka topic 'transactions'"):
        part._without_errors([_Message(-1, KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))])
    eof = KafkaError(KafkaError._PARTITION_EOF)
    assert [m.offset() for m in part._without_errors([_Message(3), _Message(-1, eof)])] == [3]
    assert part._eof


def _client_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = {"Consumer", "Producer", "AdminClient"}
    return [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id in names)
            or (isinstance(node.func, ast.Attribute) and node.func.attr in names)
        )
    ]


# devstack's broker health check sets log_level 0 (silent) and is not freshet's to change here.
_ALLOWED = {"flows/stream/kafka_clients.py", "flows/ops/devstack.py"}


def test_every_kafka_client_is_made_by_flows_kafka_clients() -> None:
    files = [
        *(REPO / "flows").rglob("*.py"),
        *(REPO / "sinks").rglob("*.py"),
        *(REPO / "serving").rglob("*.py"),
        REPO / "tests/integration/pipeline_harness.py",
        REPO / "tests/integration/conftest.py",
    ]
    direct = [
        call
        for path in files
        if str(path.relative_to(REPO)) not in _ALLOWED
        for call in _client_calls(path)
    ]
    assert direct == [], "use freshet.stream.kafka_clients.consumer/producer/admin"


def test_an_unreachable_kafka_anywhere_in_the_chain_is_one_line_and_exit_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FRESHET_DEBUG", raising=False)
    cause = KafkaUnreachable("127.0.0.1:1", 10, "broker transport failure")
    try:
        try:
            raise cause
        except KafkaUnreachable as exc:
            raise RuntimeError("error building FixedPartitionedSource") from exc  # as Bytewax
    except RuntimeError as wrapped:
        code = _report(wrapped)
    err = capsys.readouterr().err
    assert code == EXIT_UNREACHABLE
    assert err.splitlines() == [f"Error: {cause}"]
    assert "127.0.0.1:1" in err
    assert "freshet doctor" in err


def test_an_unexpected_error_is_one_line_naming_its_root_cause_and_the_traceback_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FRESHET_DEBUG", raising=False)
    try:
        try:
            {}["missing"]
        except KeyError as exc:
            raise RuntimeError("error calling `StatefulSourcePartition.next_batch`") from exc
    except RuntimeError as wrapped:
        code = _report(wrapped)
    (line,) = capsys.readouterr().err.splitlines()
    assert code == 1
    assert line.startswith("Error: unexpected error: KeyError: 'missing'; traceback in ")
    path = Path(line.split("traceback in ")[1].split(" (or run with --debug)")[0])
    assert "KeyError" in path.read_text()
    path.unlink()


def test_with_debug_the_traceback_is_printed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRESHET_DEBUG", "1")
    try:
        raise ValueError("bad")
    except ValueError as exc:
        code = _report(exc)
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1] == (
        "Error: unexpected error: ValueError: bad; the traceback is above"
    )


def test_debug_after_the_command_moves_to_the_group() -> None:
    assert _debug_first(["run", "card_txn", "--debug"]) == ["--debug", "run", "card_txn"]
    assert _debug_first(["run", "--", "--debug"]) == ["run", "--", "--debug"]
    assert _debug_first(["doctor"]) == ["doctor"]


def test_freshet_kafka_timeout_is_read_once_and_checked() -> None:
    assert Settings.from_env({}).kafka_timeout_s == 10.0
    assert Settings.from_env({"FRESHET_KAFKA_TIMEOUT": "2.5"}).kafka_timeout_s == 2.5
    for bad in ("abc", "0", "-1", "nan"):
        with pytest.raises(SettingsError, match="FRESHET_KAFKA_TIMEOUT"):
            Settings.from_env({"FRESHET_KAFKA_TIMEOUT": bad})
