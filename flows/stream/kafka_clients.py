"""Every Kafka client freshet creates, made here: librdkafka's log goes through Python logging,
rate-limited, and a command checks the broker answers (:func:`preflight`) before it starts.

    from freshet.stream import kafka_clients

    kafka_clients.preflight(settings.kafka_client_config(), timeout_s=settings.kafka_timeout_s)
    consumer = kafka_clients.consumer({**settings.kafka_client_config(), "group.id": "x"})

Left to itself, librdkafka writes to stderr: while a broker is down each client logs a failed
connect about 20 times a second, hundreds of lines before a command's own error. Here every
client gets ``logger`` (the ``freshet.kafka`` logger) and ``error_cb``; :class:`RateLimit` on
that logger lets the same message through once per ``period_s`` (30 s) and says how many
repeats it held back. Connection failures (librdkafka's ``FAIL`` log, ``_TRANSPORT``,
``_ALL_BROKERS_DOWN``, ...) count as one message whatever broker, client or timing they name,
so an outage logs one line per period. Logs and errors reach Python when the client is polled
(``consume``, ``poll``, ``flush``), on the polling thread.

Errors: :class:`KafkaUnreachable` (a ``ConnectionError``) when the broker does not answer in
time; its message names the bootstrap address and points to ``freshet doctor``.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "LOGGER_NAME",
    "KafkaUnreachable",
    "RateLimit",
    "TopicError",
    "admin",
    "client_config",
    "consumer",
    "ensure_topics",
    "is_transient",
    "log_transient",
    "missing_topics",
    "preflight",
    "producer",
]

LOGGER_NAME = "freshet.kafka"
# How long a command waits for the broker before it gives up (FRESHET_KAFKA_TIMEOUT).
DEFAULT_TIMEOUT_S = 10.0
# The same message at most once per this many seconds.
RATE_LIMIT_PERIOD_S = 30.0

_CONNECTION = "kafka connection"  # the rate-limit key shared by every connection failure
_DIGITS = re.compile(r"\d+")
_CLIENT_NAME = re.compile(r"rdkafka#\w+-\d+")


class KafkaUnreachable(ConnectionError):
    """No broker answered within the timeout (wrong address, broker down, network, auth)."""

    def __init__(self, bootstrap: str, timeout_s: float, reason: str) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self.reason = reason
        super().__init__(
            f"cannot reach Kafka at {bootstrap} (FRESHET_KAFKA_BOOTSTRAP) within {timeout_s:g} s"
            f" ({reason}); run `freshet doctor` to check the setup"
        )


@functools.cache
def _connection_codes() -> frozenset[int]:
    from confluent_kafka import KafkaError

    return frozenset(
        {
            KafkaError._TRANSPORT,
            KafkaError._ALL_BROKERS_DOWN,
            KafkaError._RESOLVE,
            KafkaError._TIMED_OUT,
            KafkaError.NETWORK_EXCEPTION,
            KafkaError.REQUEST_TIMED_OUT,
            KafkaError.BROKER_NOT_AVAILABLE,
        }
    )


@functools.cache
def _transient_codes() -> frozenset[int]:
    from confluent_kafka import KafkaError

    return _connection_codes() | {
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.REPLICA_NOT_AVAILABLE,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.OFFSET_NOT_AVAILABLE,
        KafkaError.KAFKA_STORAGE_ERROR,
    }


def is_transient(error: Any) -> bool:
    """Whether a consumer error (``confluent_kafka.KafkaError``) goes away by itself when
    the broker is back: connection loss, timeouts, a leader moving. librdkafka keeps
    reconnecting; the reader only has to keep polling."""
    if error.fatal():
        return False
    return bool(error.code() in _transient_codes() or error.retriable())


class RateLimit(logging.Filter):
    """Passes a message at most once per ``period_s``; the next one that passes after repeats
    were held back ends with how many (``... (+41 like it in the last 30 s)``).

    Messages are alike when they differ only in numbers and librdkafka client names (``after
    0ms`` / ``after 1ms``, ``rdkafka#consumer-3`` / ``-4``); connection failures are all alike
    (records whose ``kafka_key`` attribute is set use it as the key).
    """

    def __init__(
        self,
        period_s: float = RATE_LIMIT_PERIOD_S,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        super().__init__()
        self.period_s = period_s
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        # key -> [when it last passed, repeats held back since]
        self._seen: dict[str, list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = _key(record)
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.period_s:
                seen[1] += 1
                return False
            if seen is None and len(self._seen) >= self._max_keys:
                self._forget(now)
            self._seen[key] = [now, 0]
        if seen is not None and seen[1]:
            record.msg = (
                f"{record.getMessage()} (+{seen[1]:.0f} like it in the last {now - seen[0]:.0f} s)"
            )
            record.args = None
        return True

    def _forget(self, now: float) -> None:
        """Drop keys quiet for a period; if none are, the oldest half (bounded memory)."""
        stale = [k for k, (at, _) in self._seen.items() if now - at >= self.period_s]
        if not stale:
            ordered = sorted(self._seen, key=lambda k: self._seen[k][0])
            stale = ordered[: len(ordered) // 2 or 1]
        for k in stale:
            del self._seen[k]


def _key(record: logging.LogRecord) -> str:
    key = getattr(record, "kafka_key", None)
    if key is not None:
        return str(key)
    args = record.args
    # confluent-kafka calls logger.log(level, "%s [%s] %s", facility, client name, text).
    if isinstance(args, tuple) and len(args) == 3 and args[0] == "FAIL":
        return _CONNECTION
    return _DIGITS.sub("#", _CLIENT_NAME.sub("rdkafka#", record.getMessage()))


log = logging.getLogger(LOGGER_NAME)
_limit = RateLimit()
log.addFilter(_limit)


def _on_error(error: Any) -> None:
    """``error_cb`` of every client: librdkafka's client-wide errors (it retries them itself)."""
    key = _CONNECTION if error.code() in _connection_codes() else f"error {error.name()}"
    level = logging.ERROR if error.fatal() else logging.WARNING
    log.log(level, "Kafka: %s (%s)", error.str(), error.name(), extra={"kafka_key": key})


def log_transient(where: str, error: Any) -> None:
    """Log a transient consumer error once per period: ``where`` is e.g. ``"reading t[0]"``."""
    key = _CONNECTION if error.code() in _connection_codes() else f"{where} {error.name()}"
    log.warning(
        "%s: %s (%s); retrying until the broker is back",
        where,
        error.str(),
        error.name(),
        extra={"kafka_key": key},
    )


def client_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` plus the ``logger`` and ``error_cb`` every freshet client has (a caller's
    own ``logger``/``error_cb`` in ``config`` is kept)."""
    return {"logger": log, "error_cb": _on_error, **config}


def consumer(config: Mapping[str, Any]) -> Consumer:
    """A ``confluent_kafka.Consumer`` with :func:`client_config`."""
    from confluent_kafka import Consumer

    return Consumer(client_config(config))


def producer(config: Mapping[str, Any]) -> Producer:
    """A ``confluent_kafka.Producer`` with :func:`client_config`."""
    from confluent_kafka import Producer

    return Producer(client_config(config))


def admin(config: Mapping[str, Any]) -> AdminClient:
    """A ``confluent_kafka.admin.AdminClient`` with :func:`client_config`."""
    from confluent_kafka.admin import AdminClient

    return AdminClient(client_config(config))


def preflight(
    config: Mapping[str, Any],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    client: Any = None,
    topic: str | None = None,
) -> Any:
    """The cluster's metadata (``ClusterMetadata``: brokers, topics), or
    :class:`KafkaUnreachable` once ``timeout_s`` passed without an answer.

    Every command that needs Kafka calls this first, before it starts a dataflow: a source
    failing inside Bytewax prints a Rust panic (with a backtrace under ``RUST_BACKTRACE``),
    and Bytewax's own partition listing waits for the broker without a bound. ``client``: an
    admin client to use (else one is made and dropped); ``topic``: ask for that topic only
    (a broker with ``auto.create.topics.enable`` then creates it).
    """
    from confluent_kafka import KafkaException

    bootstrap = str(config.get("bootstrap.servers", "?"))
    if client is None:
        # The failed connects during the wait are this check's to report: held back, not logged.
        client = admin({**config, "logger": _quiet, "error_cb": _ignore})
    try:
        return client.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        reason = str(error.str()) if error is not None and hasattr(error, "str") else str(exc)
        raise KafkaUnreachable(bootstrap, timeout_s, _short(reason)) from exc


class TopicError(RuntimeError):
    """Kafka refused to create a topic (the message names it and why)."""


def ensure_topics(
    config: Mapping[str, Any],
    topics: Mapping[str, int],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    replication_factor: int = -1,
) -> dict[str, tuple[str, int]]:
    """Create the missing ones of ``topics`` (``name -> partitions``), after checking that Kafka
    answers (:func:`preflight`: :class:`KafkaUnreachable` after ``timeout_s``). Returns
    ``name -> ("created" | "exists", partitions)``; existing topics are left alone. Raises
    :class:`TopicError` naming a topic Kafka refused to create."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.cimpl import NewTopic

    client = admin(config)
    existing = preflight(config, timeout_s=timeout_s, client=client).topics
    outcome = {
        name: ("exists", len(existing[name].partitions)) for name in topics if name in existing
    }
    missing = [name for name in topics if name not in existing]
    if not missing:
        return outcome
    futures = client.create_topics(
        [NewTopic(name, topics[name], replication_factor) for name in missing],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    for name in missing:
        try:
            futures[name].result(timeout=timeout_s + 5)
            outcome[name] = ("created", topics[name])
            log.info("created topic %s (%d partitions)", name, topics[name])
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                outcome[name] = ("exists", topics[name])  # created meanwhile
                continue
            reason = error.str() if error is not None else str(exc)
            raise TopicError(f"cannot create topic {name!r}: {reason}") from exc
    return outcome


def missing_topics(metadata: Any, topics: Iterable[str]) -> list[str]:
    """The ``topics`` that ``metadata`` (from :func:`preflight`) does not list."""
    return [t for t in topics if t not in metadata.topics or metadata.topics[t].error is not None]


def _short(reason: str) -> str:
    # "Failed to get metadata: Local: Broker transport failure" -> the part a person acts on.
    return reason.removeprefix("Failed to get metadata: ").removeprefix("Local: ").lower()


def _ignore(_error: Any) -> None:
    return None


_quiet = logging.getLogger(f"{LOGGER_NAME}.preflight")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False
