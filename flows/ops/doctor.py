"""``freshet doctor``: is this deployment able to run the registered views, and if not, why?

The views are those in use: the modules of ``FRESHET_VIEWS``, or the demo views when it is
unset (:mod:`freshet.dsl.registry`), or the ones named on the command line.

Two halves, so the judgement is testable without servers:

* **Probes** (:func:`probe_kafka`, :func:`probe_redis`) talk to Kafka and Redis once each and
  return plain facts (:class:`KafkaFacts`, :class:`RedisFacts`), or the error that stopped them.
* **Checks** (``check_*``) are pure functions from facts to :class:`Finding` s: a level
  (``ok``/``warn``/``error``), what was found, and what to do about it.

Redis eviction, thought through (:func:`check_eviction`). freshet keeps the latest value per
``(view, entity)`` in Redis and sets a TTL on it when the view has one. Redis evicts only once
``used_memory`` reaches ``maxmemory`` (``maxmemory 0`` means no limit: nothing is ever evicted,
Redis grows until the host runs out):

* ``noeviction``: writes fail with ``OOM`` instead. The flow's writer then stops (loudly),
  nothing that was served disappears. The only policy that never drops a feature value.
* ``volatile-lru|lfu|random|ttl``: evict keys *that have a TTL*. Every key of a view with a
  TTL has one, so these keys are exactly the candidates: a live entity's value vanishes before
  its TTL and lookups answer ``found: false`` — silently wrong. (``volatile-ttl`` takes the
  ones closest to expiry first, still early.) Only views without a TTL are safe there.
* ``allkeys-*``: any key can go, with or without TTL.

So doctor says ``ok`` for ``noeviction`` or no limit, ``warn`` for a policy that can evict the
keys of some registered view (naming them), and always how much memory is left.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from freshet.dsl.definitions import FeatureView
from freshet.stream.deadletter import dead_letter_topic

__all__ = [
    "C_EXTENSIONS",
    "MIN_REDIS_VERSION",
    "Finding",
    "KafkaFacts",
    "Level",
    "RedisFacts",
    "RedisNode",
    "check_c_extensions",
    "check_eviction",
    "check_kafka",
    "check_offline_dir",
    "check_redis",
    "check_redis_mode",
    "check_redis_version",
    "check_topics",
    "diagnose",
    "probe_c_extensions",
    "probe_kafka",
    "probe_redis",
]

# The newest feature freshet needs is SET … PX with Lua's struct library (both in 2.6); it is
# tested on 7.x. Older servers get a warning, not an error.
MIN_REDIS_VERSION = (6, 0)
# Memory use above this share of maxmemory gets a warning (eviction or OOM is near).
_MEMORY_WARN_SHARE = 0.8
_MIN_FREE_DISK_BYTES = 1 << 30


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Finding:
    """One check's result: ``fix`` says what to do (empty when nothing needs doing)."""

    check: str
    level: Level
    message: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"check": self.check, "level": self.level.value, "message": self.message,
                "fix": self.fix}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Facts


@dataclass(frozen=True, slots=True)
class KafkaFacts:
    """What Kafka said: ``error`` set when it could not be reached (the rest is then empty)."""

    bootstrap: str
    error: str | None = None
    cluster_id: str | None = None
    brokers: int = 0
    # topic -> partition count, for every topic the broker lists
    topics: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RedisNode:
    """One Redis server (a cluster primary, or the only server)."""

    address: str
    version: str
    maxmemory: int
    policy: str
    used_memory: int
    cluster_enabled: bool


@dataclass(frozen=True, slots=True)
class RedisFacts:
    """What Redis said: ``error`` set when it could not be reached."""

    url: str  # shown to people: no password
    url_says_cluster: bool
    error: str | None = None
    nodes: tuple[RedisNode, ...] = ()


@dataclass(frozen=True, slots=True)
class RegistryFacts:
    """What the schema registry said (``FRESHET_SCHEMA_REGISTRY_URL``): ``error`` set when it
    could not be reached or did not answer as a registry."""

    url: str
    error: str | None = None
    subjects: int = 0


# --------------------------------------------------------------------------------------------
# Checks (pure)


def check_schema_registry(facts: RegistryFacts, views: Sequence[FeatureView]) -> Finding:
    """A configured registry must answer: Avro views read every record's schema from it."""
    check = "schema registry"
    avro = [v.name for v in views if v.source.encoding == "avro"]
    if facts.error is not None:
        return Finding(
            check,
            Level.ERROR if avro else Level.WARN,
            f"{facts.url}: {facts.error}",
            "start the registry or fix FRESHET_SCHEMA_REGISTRY_URL (unset it for schemaless "
            "Avro); a flow stops after 30 s without it",
        )
    return Finding(
        check,
        Level.OK,
        f"{facts.url}: {facts.subjects} subjects; Avro views {', '.join(avro) or '(none)'} read "
        "the Confluent wire format",
    )


def check_kafka(facts: KafkaFacts) -> Finding:
    if facts.error is not None:
        return Finding(
            "kafka",
            Level.ERROR,
            f"cannot reach Kafka at {facts.bootstrap}: {facts.error}",
            "check FRESHET_KAFKA_BOOTSTRAP (host:port of a broker's listener reachable from "
            "here) and FRESHET_KAFKA_CONFIG_* security settings; `freshet dev up` starts a "
            "local broker",
        )
    return Finding(
        "kafka",
        Level.OK,
        f"{facts.bootstrap}: cluster {facts.cluster_id}, {facts.brokers} broker(s)",
    )


def check_topics(
    facts: KafkaFacts, views: Sequence[FeatureView], *, workers: int | None = None
) -> list[Finding]:
    """Source topics must exist; dead-letter topics should; partitions vs ``workers``."""
    findings = []
    for view in views:
        topic = view.source.topic
        check = f"topic {topic}"
        partitions = facts.topics.get(topic)
        if partitions is None:
            findings.append(
                Finding(
                    check,
                    Level.ERROR,
                    f"source topic {topic!r} of view {view.name!r} does not exist",
                    f"`freshet topics create {view.name} --partitions N` creates it and the "
                    "dead-letter topic, with N (default 3) at least the number of workers "
                    "you plan",
                )
            )
        else:
            findings.append(_partition_finding(check, view, partitions, workers))
        dlq = dead_letter_topic(view)
        if dlq not in facts.topics:
            findings.append(
                Finding(
                    f"topic {dlq}",
                    Level.WARN,
                    f"dead-letter topic {dlq!r} of view {view.name!r} does not exist yet",
                    "`freshet run` creates it (1 partition) when it starts; if its principal "
                    f"may not create topics, create it now: `freshet topics create {view.name}`",
                )
            )
        else:
            findings.append(
                Finding(
                    f"topic {dlq}",
                    Level.OK,
                    f"dead-letter topic of {view.name}, {facts.topics[dlq]} partition(s)",
                )
            )
    return findings


def _partition_finding(
    check: str, view: FeatureView, partitions: int, workers: int | None
) -> Finding:
    text = f"source of {view.name}, {partitions} partition(s)"
    if workers is None:
        return Finding(check, Level.OK, text)
    if partitions < workers:
        return Finding(
            check,
            Level.WARN,
            f"{text} for {workers} workers: {workers - partitions} worker(s) will read nothing",
            "add partitions (kafka-topics.sh --alter --partitions N; keys move, so only "
            "before the first run or with a fresh recovery dir) or run fewer workers",
        )
    if partitions % workers:
        return Finding(
            check,
            Level.WARN,
            f"{text} do not split evenly over {workers} workers: some read "
            f"{partitions // workers + 1}, others {partitions // workers}",
            "use a worker count that divides the partition count (an uneven split also "
            "stalled Bytewax 0.21 in bytewax/bytewax#556)",
        )
    return Finding(check, Level.OK, f"{text}, {partitions // workers} per worker")


def check_redis(facts: RedisFacts) -> Finding:
    if facts.error is not None:
        return Finding(
            "redis",
            Level.ERROR,
            f"cannot reach Redis at {facts.url}: {facts.error}",
            "check FRESHET_REDIS_URL (redis://[user:password@]host:port/db, rediss:// for "
            "TLS, ?cluster=true for Redis Cluster); `freshet dev up` starts a local Redis",
        )
    kind = f"cluster of {len(facts.nodes)} primaries" if facts.url_says_cluster else "server"
    return Finding("redis", Level.OK, f"{facts.url}: {kind}")


def check_redis_mode(facts: RedisFacts) -> Finding | None:
    """The URL's ``?cluster=true`` must match the server's ``cluster_enabled``."""
    if facts.error is not None or not facts.nodes:
        return None
    server_cluster = any(node.cluster_enabled for node in facts.nodes)
    if server_cluster and not facts.url_says_cluster:
        return Finding(
            "redis mode",
            Level.ERROR,
            f"{facts.nodes[0].address} is a Redis Cluster node but FRESHET_REDIS_URL has no "
            "?cluster=true: writes and lookups of keys on other nodes fail with MOVED",
            "append ?cluster=true to FRESHET_REDIS_URL (and use database 0)",
        )
    if facts.url_says_cluster and not server_cluster:
        return Finding(
            "redis mode",
            Level.ERROR,
            "FRESHET_REDIS_URL has ?cluster=true but the server is not a cluster node",
            "remove ?cluster=true from FRESHET_REDIS_URL",
        )
    return None


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_redis_version(node: RedisNode) -> Finding:
    if _version_tuple(node.version) < MIN_REDIS_VERSION:
        wanted = ".".join(map(str, MIN_REDIS_VERSION))
        return Finding(
            f"redis version {node.address}",
            Level.WARN,
            f"Redis {node.version} is older than {wanted}; freshet is tested on 7.x",
            f"upgrade Redis to {wanted} or newer",
        )
    return Finding(f"redis version {node.address}", Level.OK, f"Redis {node.version}")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def check_eviction(node: RedisNode, views: Sequence[FeatureView]) -> Finding:
    """Can this server's eviction policy drop feature keys? See the module docstring."""
    check = f"redis memory {node.address}"
    policy = node.policy
    if node.maxmemory == 0:
        return Finding(
            check,
            Level.OK,
            f"maxmemory-policy {policy}, no maxmemory: never evicts "
            f"({_size(node.used_memory)} used; Redis grows until the host runs out)",
        )
    used = f"{_size(node.used_memory)} of maxmemory {_size(node.maxmemory)} used"
    with_ttl = [v.name for v in views if v.ttl_seconds]
    if policy.startswith("allkeys-"):
        victims: list[str] = [v.name for v in views]
    elif policy.startswith("volatile-"):
        victims = with_ttl
    else:
        victims = []
    if victims:
        why = "any key" if policy.startswith("allkeys-") else "keys with a TTL"
        return Finding(
            check,
            Level.WARN,
            f"maxmemory-policy {policy} evicts {why} when memory is full, so values of "
            f"{', '.join(victims)} can disappear before their TTL (lookups then answer "
            f"found: false); {used}",
            "CONFIG SET maxmemory-policy noeviction (writes then fail loudly instead), give "
            "Redis memory for every live entity (deploy/README.md, sizing) and alert on "
            "used_memory/maxmemory",
        )
    if node.used_memory >= _MEMORY_WARN_SHARE * node.maxmemory:
        action = "writes fail with OOM" if policy == "noeviction" else "keys are evicted"
        return Finding(
            check,
            Level.WARN,
            f"{used} (over {_MEMORY_WARN_SHARE:.0%}): at maxmemory {action}",
            "raise maxmemory, add cluster shards, or shorten view TTLs",
        )
    return Finding(check, Level.OK, f"maxmemory-policy {policy}, {used}")


# freshet's C extensions and what runs without each (pip skips one it cannot compile).
C_EXTENSIONS = {
    "freshet.decode._fastdecode": "Avro decoding and shard grouping run in Python, ~2.8x slower",
    "freshet.engine._faststate": "recovery snapshots pickle engine states ~1.5x slower",
}


def probe_c_extensions() -> list[str]:
    """The C extensions of :data:`C_EXTENSIONS` that cannot be imported here."""
    import importlib

    missing = []
    for name in C_EXTENSIONS:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def check_c_extensions(missing: Sequence[str]) -> Finding:
    if not missing:
        return Finding("c extensions", Level.OK, f"built: {', '.join(C_EXTENSIONS)}")
    return Finding(
        "c extensions",
        Level.WARN,
        "not built: " + "; ".join(f"{name} ({C_EXTENSIONS[name]})" for name in missing),
        "install a C compiler and Python's headers (Debian: apt-get install gcc python3-dev), "
        "then reinstall freshet (pip install --force-reinstall --no-deps .)",
    )


def check_offline_dir(path: Path) -> Finding:
    """The offline log root must be writable (created if missing) with some free space."""
    check = "offline dir"
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return Finding(
            check,
            Level.ERROR,
            f"{path}: {existing} is not a directory",
            "point FRESHET_OFFLINE_DIR at a directory",
        )
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".freshet-doctor-"):
            pass
    except OSError as exc:
        return Finding(
            check,
            Level.ERROR,
            f"{path}: cannot write in {existing}: {exc.strerror or exc}",
            f"make {existing} writable for user {_user()} or set FRESHET_OFFLINE_DIR elsewhere "
            "(every flow process needs the same directory: a shared volume in a cluster)",
        )
    free = shutil.disk_usage(existing).free
    created = "" if existing == path else f" (created on first write under {existing})"
    if free < _MIN_FREE_DISK_BYTES:
        return Finding(
            check,
            Level.WARN,
            f"{path}{created}: only {_size(free)} free",
            "free disk space or move FRESHET_OFFLINE_DIR: segments are ~50 bytes per row",
        )
    return Finding(check, Level.OK, f"{path}{created}: writable, {_size(free)} free")


def _user() -> str:
    try:
        return os.getlogin()
    except OSError:
        return str(os.getuid())


def diagnose(
    kafka: KafkaFacts,
    redis_facts: RedisFacts,
    views: Sequence[FeatureView],
    offline_dir: Path,
    *,
    workers: int | None = None,
    registry: RegistryFacts | None = None,
    missing_extensions: Sequence[str] = (),
) -> list[Finding]:
    """Every finding, in the order a person fixes things: connectivity first."""
    findings = [check_kafka(kafka)]
    if kafka.error is None:
        findings += check_topics(kafka, views, workers=workers)
    findings.append(check_redis(redis_facts))
    mode = check_redis_mode(redis_facts)
    if mode is not None:
        findings.append(mode)
    for node in redis_facts.nodes:
        findings.append(check_redis_version(node))
        findings.append(check_eviction(node, views))
    if registry is not None:
        findings.append(check_schema_registry(registry, views))
    findings.append(check_offline_dir(offline_dir))
    findings.append(check_c_extensions(missing_extensions))
    return findings


def probe_schema_registry(url: str, *, timeout_s: float = 5.0) -> RegistryFacts:
    """``GET <url>/subjects`` through the flow's own client (same auth, no credentials shown)."""
    import urllib.error

    from freshet.decode.schema_registry import SchemaRegistry, SchemaRegistryError

    try:
        registry = SchemaRegistry(url, timeout_s=timeout_s)
    except SchemaRegistryError as exc:
        return RegistryFacts(_redacted(url), error=str(exc))
    try:
        subjects = registry.subjects()
    except urllib.error.HTTPError as exc:
        return RegistryFacts(registry.url, error=f"GET /subjects answered HTTP {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        return RegistryFacts(registry.url, error=f"unreachable ({getattr(exc, 'reason', exc)})")
    except SchemaRegistryError as exc:
        return RegistryFacts(registry.url, error=f"{exc}: not a registry?")
    return RegistryFacts(registry.url, subjects=len(subjects))


# --------------------------------------------------------------------------------------------
# Probes (I/O)


def probe_kafka(config: Mapping[str, str], *, timeout_s: float = 5.0) -> KafkaFacts:
    """Describe the cluster and list its topics with one admin client."""
    from confluent_kafka import KafkaException

    from freshet.stream import kafka_clients

    bootstrap = config.get("bootstrap.servers", "")
    # librdkafka's log goes to the rate-limited ``freshet.kafka`` logger like every client's;
    # what matters here is reported as this finding.
    admin = kafka_clients.admin(
        {**config, "socket.connection.setup.timeout.ms": str(int(timeout_s * 1000))}
    )
    try:
        described = admin.describe_cluster(request_timeout=timeout_s).result(timeout=timeout_s + 1)
        metadata = admin.list_topics(timeout=timeout_s)
    except (KafkaException, TimeoutError) as exc:
        return KafkaFacts(bootstrap, error=_kafka_error(exc))
    topics = {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if topic.error is None
    }
    return KafkaFacts(
        bootstrap,
        cluster_id=described.cluster_id,
        brokers=len(described.nodes),
        topics=topics,
    )


def _kafka_error(exc: BaseException) -> str:
    if exc.args and hasattr(exc.args[0], "str"):
        return str(exc.args[0].str())
    return str(exc) or type(exc).__name__


def _redacted(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def probe_redis(url: str, *, timeout_s: float = 5.0) -> RedisFacts:
    """Version, memory policy and cluster mode of the server (or of every cluster primary).

    Reads ``INFO`` (``server``, ``memory``, ``cluster``), which managed services allow where
    ``CONFIG GET`` is disabled.
    """
    import redis
    import redis.cluster

    from freshet.sinks.redis_store import connect, split_cluster_url

    shown = _redacted(url)
    try:
        plain, says_cluster = split_cluster_url(url)
    except ValueError as exc:
        return RedisFacts(shown, False, error=str(exc))
    errors = (redis.RedisError, redis.exceptions.RedisClusterException)
    try:
        client: Any = connect(url)
    except errors as exc:
        if says_cluster:  # maybe a plain server behind a cluster URL: let the mode check say so
            return _probe_plain(plain, shown, says_cluster, exc)
        return RedisFacts(shown, says_cluster, error=str(exc))
    try:
        if isinstance(client, redis.cluster.RedisCluster):
            servers = [
                (f"{node.host}:{node.port}", node.redis_connection)
                for node in client.get_primaries()  # type: ignore[no-untyped-call]
            ]
        else:
            servers = [(_address(client), client)]
        nodes = tuple(_node_facts(address, server) for address, server in servers)
    except errors as exc:
        return RedisFacts(shown, says_cluster, error=str(exc) or type(exc).__name__)
    finally:
        client.close()
    return RedisFacts(shown, says_cluster, nodes=nodes)


def _probe_plain(plain_url: str, shown: str, says_cluster: bool, cause: Exception) -> RedisFacts:
    import redis

    client = redis.Redis.from_url(plain_url, socket_connect_timeout=2.0, socket_timeout=5.0)
    try:
        node = _node_facts(_address(client), client)
    except redis.RedisError:
        return RedisFacts(shown, says_cluster, error=str(cause) or type(cause).__name__)
    finally:
        client.close()
    if node.cluster_enabled:
        return RedisFacts(shown, says_cluster, error=str(cause) or type(cause).__name__)
    return RedisFacts(shown, says_cluster, nodes=(node,))


def _address(client: Any) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def _node_facts(address: str, server: Any) -> RedisNode:
    info: dict[str, Any] = {}
    for section in ("server", "memory", "cluster"):
        info.update(server.info(section))
    return RedisNode(
        address=address,
        version=str(info.get("redis_version", "?")),
        maxmemory=int(info.get("maxmemory", 0)),
        policy=str(info.get("maxmemory_policy", "?")),
        used_memory=int(info.get("used_memory", 0)),
        cluster_enabled=bool(int(info.get("cluster_enabled", 0))),
    )
