"""The Redis online store: key layout, newer-wins writer and reader, in one module.

Layout
------
One Redis string per ``(view, version, entity)``::

    key   = b"fs:" + view + b":" + version + b":{" + entity + b"}"
    value = struct ">qqq" (as_of ms, source offset, valid_until ms or -1; 24 bytes,
            big-endian int64) + orjson array of the feature values, in the view's feature order

  (Records written before ``valid_until`` existed have the 16-byte header ``>qq``; the reader
  tells them apart by the byte after it, which is the values' ``[`` in the old layout and the
  high byte of ``valid_until``, ``0x00`` or ``0xff``, in the new one.)

* The version lives in the key, so a new view version starts an empty key space and old
  versions can be dropped with ``SCAN fs:<view>:<old>:*``.
* Entities are opaque: the entity is the key's tail after a fixed prefix (view names are
  checked to hold neither ``:`` nor braces), so no entity can collide with another view's or
  another entity's key, whatever bytes it holds (``:``, ``{``, ``}``, NUL, non-UTF-8 via
  ``surrogateescape``; other lone surrogates raise ``InvalidEntityError``).
* Redis Cluster: the entity is wrapped in a hash tag, so every view of one entity lives in
  one slot (a multi-view lookup of an entity stays on one node). An entity that itself holds
  ``}`` only shortens its own tag (an empty tag, for an entity that is empty or starts with
  ``}``, hashes the whole key instead); the key stays unique either way. Writes group rows
  per slot (see Writes); batch reads use ``MGET`` on a single node and ``mget_nonatomic``
  (one ``MGET`` per slot, pipelined per node) on a cluster client.
* The fixed-width binary header lets the Lua script compare versions with
  ``struct.unpack`` without decoding the values; orjson keeps values compact (``152.5`` is 5
  bytes, where msgpack spends 9 on every float64): less memory per entity than a Redis hash
  of the same values (figures in ``tests/bench/README.md``).

Writes
------
One Lua script (``EVALSHA``, loaded once per writer and again after ``NOSCRIPT``, e.g. after
a Redis restart or ``SCRIPT FLUSH``) takes up to ``max_rows_per_call`` rows of one TTL (the TTL
is passed once per call, the rows as key + record) (default 500,
which bounds how long one script blocks Redis); all calls of a batch go in one pipeline, one
round trip (faster than one call per row or plain pipelined ``SET``s; figures in
``tests/bench/README.md``). On a
cluster client the rows are grouped per hash slot first (a script may only touch one slot)
and each call is sent straight to the slot's node, one pipeline round trip per node.
The script writes a row only if its ``(as_of, offset)`` is ``>=`` the stored one, so replays,
retries and concurrent backfills never regress a value and rewriting an identical row is a
no-op in effect. TTL (``ViewLayout.ttl_seconds``, 0 = none) is
counted from write time (``SET … PX``); the reader also reports ``expired`` when
``as_of + ttl < now``, so an old value rewritten by a backfill is never served as fresh. Once a
key has expired its version is forgotten: an older row written later is accepted (it is itself
reported expired if older than the TTL).

On ``ConnectionError``/``TimeoutError``/``BusyLoadingError`` the whole batch is re-sent after a
capped exponential backoff; rows are never dropped (the script is idempotent, so re-sending
rows that had already landed is harmless). ``write`` returns the number of rows that won;
after a retry, rows that had landed before the failure count again.

Staleness
---------
A record's ``valid_until`` is when its windowed values next change without new events (the
entity's next expiry boundary after ``as_of``; -1: never). The flow writes the boundary's row
within the view's allowed lateness after it, so once ``now`` passes ``valid_until + lateness +
grace`` (grace: ``stale_grace_ms``, ``FRESHET_STALE_GRACE_MS``, default 5 s) the stored windowed
values are older than the truth: the reader reports them ``stale`` (values kept; lifetime
features stay ``present``). A lookup given ``max_staleness_ms`` gets null, ``stale`` windowed
values when ``now - valid_until`` exceeds it.

Reads
-----
``RedisFeatureReader`` (sync) and ``AsyncRedisFeatureReader`` (any async client with ``mget``:
``redis.asyncio`` or the endpoint's ``freshet.serving.redis_link.RedisLink``) share the key building
and decoding; each lookup is one ``MGET`` round trip and yields :class:`Lookup` dicts, the
endpoint's JSON as is; ``record_keys``, ``mget`` and ``record_values`` read entities of several
views in one ``MGET`` (a feature service's lookup). A reader knows each view by its name and may
also know a version by ``NAME@VERSION`` (the endpoint serves older versions that way). Clients
must be built with ``decode_responses=False`` (``connect`` and
``connect_async`` do so).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal, NotRequired, Protocol, TypedDict, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis
import redis.asyncio
import redis.cluster
from redis.crc import key_slot
from redis.exceptions import BusyLoadingError, NoScriptError

from freshet.sinks.clock import now_ms
from freshet.sinks.faults import crash_point
from freshet.sinks.layout import ViewLayout
from freshet.sinks.rows import Row

__all__ = [
    "CLUSTER_PARAM",
    "AsyncRedisClient",
    "AsyncRedisFeatureReader",
    "FeatureStatus",
    "InvalidEntityError",
    "Lookup",
    "RedisClient",
    "RedisFeatureReader",
    "RedisFeatureWriter",
    "UnknownFeatureError",
    "UnknownLayoutError",
    "connect",
    "connect_async",
    "decode_record",
    "encode_record",
    "is_cluster_url",
    "record_key",
    "record_valid_until",
    "scan_entities",
    "split_cluster_url",
]

log = logging.getLogger(__name__)

KEY_PREFIX = b"fs:"
# Fields of a write command (key, record, ttl_ms), for C-level maps over a batch.
_KEY_OF, _RECORD_OF, _TTL_OF = itemgetter(0), itemgetter(1), itemgetter(2)
_HEADER = struct.Struct(">qq")  # as_of (epoch ms), source offset: what the script compares
_RECORD_HEADER = struct.Struct(">qqq")  # ... and valid_until (epoch ms, -1: none)
_VALID_UNTIL = struct.Struct(">q")
HEADER_SIZE = _RECORD_HEADER.size
_OLD_HEADER_SIZE = _HEADER.size
_OPEN_BRACKET = ord("[")  # the first byte of the values in a record with the old header
# A windowed value is stale once now passes valid_until + the view's lateness + this grace.
DEFAULT_STALE_GRACE_MS = 5000

# KEYS[i] = record key; ARGV[1] = the TTL in ms of every key of the call (0 = none);
# ARGV[i + 1] = KEYS[i]'s record (header + values). Writes each row whose (as_of, offset) is
# >= the stored one; returns how many won.
WRITE_SCRIPT = b"""
local won = 0
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  local rec = ARGV[i + 1]
  local cur = redis.call('GET', KEYS[i])
  local newer = true
  if cur then
    local ca, co = struct.unpack('>i8i8', cur)
    local na, no = struct.unpack('>i8i8', rec)
    newer = na > ca or (na == ca and no >= co)
  end
  if newer then
    if ttl > 0 then
      redis.call('SET', KEYS[i], rec, 'PX', ttl)
    else
      redis.call('SET', KEYS[i], rec)
    end
    won = won + 1
  end
end
return won
"""

# Errors after which a batch is re-sent: the server is (re)starting or unreachable.
_TRANSIENT: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    BusyLoadingError,
    # Redis Cluster: CLUSTERDOWN / MASTERDOWN while a primary fails over or rejoins, TRYAGAIN
    # while its slots migrate. Rows wait for the cluster instead of crashing the flow
    # (tests/integration/test_redis_cluster.py restarts a primary under a write).
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)

FeatureStatus = Literal["present", "not_found", "expired", "stale"]


class UnknownLayoutError(KeyError):
    """A row or lookup names a view the store was not given a layout for."""

    def __init__(self, view: str, known: Sequence[str]) -> None:
        super().__init__(view)
        self.view = view
        self.known = tuple(sorted(known))

    def __str__(self) -> str:
        return f"unknown view {self.view!r}; known: {', '.join(self.known) or '(none)'}"


class InvalidEntityError(ValueError):
    """An entity string holds lone surrogates that stand for no byte sequence."""


class UnknownFeatureError(ValueError):
    """A lookup asks for features the view does not have."""

    def __init__(self, view: str, unknown: Sequence[str], known: Sequence[str]) -> None:
        self.view = view
        self.unknown = tuple(unknown)
        self.known = tuple(known)
        super().__init__(
            f"unknown feature(s) {', '.join(map(repr, self.unknown))} of view {view!r}; "
            f"known: {', '.join(self.known)}"
        )


def _check_layouts(layouts: Mapping[str, ViewLayout]) -> dict[str, ViewLayout]:
    for name, layout in layouts.items():
        # A view is known by its name, and a pinned version also as NAME@VERSION (the
        # endpoint serves an older version beside the newest one that way).
        if name != layout.name and name != f"{layout.name}@{layout.version}":
            raise ValueError(f"layout registered as {name!r} is named {layout.name!r}")
        if not name or any(c in layout.name for c in ":{}@") or not name.isprintable():
            raise ValueError(
                f"view name {name!r} cannot be used in a Redis key: it must be non-empty, "
                "printable and hold no ':', '{', '}' or '@'"
            )
    return dict(layouts)


def _entity_bytes(entity: str) -> bytes:
    # surrogateescape: an entity decoded from arbitrary bytes maps back to the same bytes.
    try:
        return entity.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise InvalidEntityError(
            f"entity {entity!r} is not text nor bytes decoded with surrogateescape: "
            f"{exc.reason} at position {exc.start}"
        ) from exc


def _key_prefix(layout: ViewLayout) -> bytes:
    return KEY_PREFIX + layout.name.encode() + b":" + str(layout.version).encode() + b":{"


def record_key(layout: ViewLayout, entity: str) -> bytes:
    """The Redis key of one entity's record of ``layout``'s view and version."""
    return _key_prefix(layout) + _entity_bytes(entity) + b"}"


def scan_entities(client: Any, layout: ViewLayout, *, count: int = 1000) -> Iterator[str]:
    """The entities holding a record of ``layout``'s view and version, by ``SCAN`` (every
    node of a cluster client). Like ``SCAN``, it may yield an entity more than once."""
    prefix = _key_prefix(layout)
    pattern = b"".join(b"\\" + bytes([c]) if c in b"*?[]\\" else bytes([c]) for c in prefix)
    for key in client.scan_iter(match=pattern + b"*", count=count):
        raw = key if isinstance(key, bytes) else key.encode("utf-8", "surrogateescape")
        if raw.startswith(prefix) and raw.endswith(b"}"):
            yield raw[len(prefix) : -1].decode("utf-8", "surrogateescape")


def encode_record(as_of: int, offset: int, values: Sequence[Any], valid_until: int = -1) -> bytes:
    """Header ``(as_of, offset, valid_until)`` followed by the values as a JSON array."""
    return _RECORD_HEADER.pack(as_of, offset, valid_until) + orjson.dumps(values)


def _body_at(raw: bytes) -> int:
    """Where a record's values start (after the old 16-byte or the 24-byte header)."""
    return _OLD_HEADER_SIZE if raw[_OLD_HEADER_SIZE] == _OPEN_BRACKET else HEADER_SIZE


def record_valid_until(raw: bytes) -> int:
    """A stored record's ``valid_until`` (-1: none, or a record from before it existed)."""
    if raw[_OLD_HEADER_SIZE] == _OPEN_BRACKET:
        return -1
    return int(_VALID_UNTIL.unpack_from(raw, _OLD_HEADER_SIZE)[0])


def decode_record(raw: bytes) -> tuple[int, int, list[Any]]:
    """``(as_of, offset, values)`` of a stored record."""
    as_of, offset = _HEADER.unpack_from(raw)
    values: list[Any] = orjson.loads(memoryview(raw)[_body_at(raw) :])
    return as_of, offset, values


# --------------------------------------------------------------------------------------------
# Writer


class _Pipeline(Protocol):
    def execute_command(self, *args: Any, **kwargs: Any) -> Any: ...
    def execute(self, raise_on_error: bool = ...) -> list[Any]: ...


class _SyncClient(Protocol):
    def pipeline(self, transaction: bool = ...) -> Any: ...
    def script_load(self, script: bytes) -> Any: ...


class RedisFeatureWriter:
    """Writes rows newer-wins, one pipelined round trip per batch; see the module docstring.

    ``client`` is a ``redis.Redis`` or ``redis.cluster.RedisCluster`` built by the caller
    (``connect(url)``); ``layouts`` maps view names to their layouts.
    """

    def __init__(
        self,
        client: Any,
        layouts: Mapping[str, ViewLayout],
        *,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        give_up_after_s: float | None = None,
        max_rows_per_call: int = 500,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> None:
        if max_rows_per_call < 1:
            raise ValueError(f"max_rows_per_call must be >= 1, got {max_rows_per_call}")
        self._client = cast(_SyncClient, client)
        self._cluster = isinstance(client, redis.cluster.RedisCluster)
        self._max_rows_per_call = max_rows_per_call
        self._layouts = _check_layouts(layouts)
        self._prefixes = {name: _key_prefix(lay) for name, lay in self._layouts.items()}
        self._ttl_ms = {name: lay.ttl_seconds * 1000 for name, lay in self._layouts.items()}
        self._widths = {name: len(lay.features) for name, lay in self._layouts.items()}
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._give_up_after_s = give_up_after_s
        self._sleep = sleep
        self._on_retry = on_retry  # called once per re-sent batch (metrics)
        self._sha: bytes | None = None

    def _commands(self, rows: Sequence[Row]) -> list[tuple[bytes, bytes, int]]:
        """``(key, record, ttl_ms)`` per row. The hot path of the flow's Redis sink: one
        lookup per run of rows of the same view, the entity encoded inline."""
        commands: list[tuple[bytes, bytes, int]] = []
        add = commands.append
        pack = _RECORD_HEADER.pack
        dumps = orjson.dumps
        view: str | None = None
        prefix, ttl_ms, width = b"", 0, 0
        for row in rows:
            if row.view != view:
                view = row.view
                if view not in self._prefixes:
                    raise UnknownLayoutError(view, list(self._layouts))
                prefix, ttl_ms, width = self._prefixes[view], self._ttl_ms[view], self._widths[view]
            values = row.values
            if len(values) != width:
                raise ValueError(
                    f"row of view {view!r} for entity {row.entity!r} has "
                    f"{len(values)} values; the layout has {width} features"
                )
            try:
                key = prefix + row.entity.encode("utf-8", "surrogateescape") + b"}"
            except UnicodeEncodeError:
                _entity_bytes(row.entity)  # raises InvalidEntityError naming the entity
                raise
            add((key, pack(row.as_of, row.offset, row.valid_until) + dumps(values), ttl_ms))
        return commands

    def write(self, rows: Sequence[Row]) -> int:
        """Write ``rows`` (any views, any order); return how many won against stored rows.

        Blocks, re-sending the batch with capped exponential backoff, while Redis is
        unreachable or loading; raises only after ``give_up_after_s`` (default: never).
        """
        if not rows:
            return 0
        commands = self._commands(rows)
        started = time.monotonic()
        delay = self._backoff_initial_s
        attempt = 0
        while True:
            try:
                return self._send(commands)
            except _TRANSIENT as exc:
                attempt += 1
                if self._on_retry is not None:
                    self._on_retry(exc)
                waited = time.monotonic() - started
                if self._give_up_after_s is not None and waited >= self._give_up_after_s:
                    raise
                log.warning(
                    "redis write of %d rows failed (attempt %d, %.1fs so far): %s; retry in %.2fs",
                    len(commands),
                    attempt,
                    waited,
                    type(exc).__name__,
                    delay,
                )
                self._sleep(delay)
                delay = min(delay * 2, self._backoff_max_s)

    def _calls(self, commands: list[tuple[bytes, bytes, int]]) -> list[list[Any]]:
        """Script calls for a batch: chunks of at most ``max_rows_per_call`` rows of one TTL
        (``numkeys, keys…, ttl_ms, records…``), each chunk within one hash slot on a cluster
        (a script may only touch keys of one slot)."""
        groups: dict[Any, list[tuple[bytes, bytes, int]]] = {}
        if self._cluster:
            for command in commands:
                groups.setdefault((key_slot(command[0]), command[2]), []).append(command)
        elif len(set(map(_TTL_OF, commands))) == 1:
            groups[None] = commands
        else:
            for command in commands:
                groups.setdefault(command[2], []).append(command)
        calls = []
        step = self._max_rows_per_call
        for group in groups.values():
            for start in range(0, len(group), step):
                chunk = group[start : start + step]
                args: list[Any] = [len(chunk)]
                args.extend(map(_KEY_OF, chunk))
                args.append(chunk[0][2])
                args.extend(map(_RECORD_OF, chunk))
                calls.append(args)
        return calls

    def _send(self, commands: list[tuple[bytes, bytes, int]]) -> int:
        calls = self._calls(commands)
        for _ in range(3):  # NOSCRIPT after a reload means the server keeps flushing scripts
            if self._sha is None:
                sha = self._client.script_load(WRITE_SCRIPT)
                self._sha = sha.encode() if isinstance(sha, str) else sha
            pipe = cast(_Pipeline, self._client.pipeline(transaction=False))
            if self._cluster:
                # Routed here by the call's first key (all its keys share a slot): left to
                # itself, redis-py 8's cluster pipeline asks a node ``COMMAND GETKEYS`` for
                # every EVALSHA, one extra round trip per slot (tests/integration/
                # test_redis_cluster.py counts the round trips).
                node_of = cast(Any, self._client).get_node_from_key
                for args in calls:
                    pipe.execute_command("EVALSHA", self._sha, *args, target_nodes=node_of(args[1]))
            else:
                for args in calls:
                    pipe.execute_command("EVALSHA", self._sha, *args)
            results = pipe.execute(raise_on_error=False)
            crash_point("redis.batch_written")
            if any(isinstance(r, NoScriptError) for r in results):
                self._sha = None  # Redis restarted or SCRIPT FLUSH: reload, re-send the batch
                continue
            for r in results:
                if isinstance(r, Exception):
                    raise r
            return sum(cast(list[int], results))
        raise redis.exceptions.ResponseError("NOSCRIPT persisted after reloading the script")


# --------------------------------------------------------------------------------------------
# Reader


class Lookup(TypedDict):
    """One entity's features as served: exactly the JSON object of DESIGN.md "Interfaces".

    ``found`` is false when Redis holds no record (never written, or TTL elapsed); an
    ``expired`` record (``as_of + ttl < now``) is found, with null values. A typed dict, not a
    dataclass, because it is the endpoint's hot path: measured, building and ``orjson``-dumping
    a frozen dataclass cost ~5.4 µs per entity against ~1.5 µs for a dict.
    """

    view: str
    entity: str
    found: bool
    as_of: int | None
    # When the windowed values next change without new events (None: never, or not found).
    valid_until: int | None
    age_ms: int | None
    features: dict[str, Any]
    status: dict[str, FeatureStatus]
    # A composite view's key fields and values (long fields as int); added by the endpoint,
    # absent for a one-field view.
    key: NotRequired[dict[str, str | int]]


@dataclass(frozen=True, slots=True)
class _Plan:
    view: str  # as the lookup named it (NAME, or NAME@VERSION)
    layout: ViewLayout
    entities: tuple[str, ...]
    keys: list[bytes]
    names: tuple[str, ...]
    indices: tuple[int, ...] | None  # None: all features, in order
    windowed: tuple[str, ...]  # the names that are windowed features (may be stale)


class _ReaderBase:
    def __init__(
        self,
        client: Any,
        layouts: Mapping[str, ViewLayout],
        *,
        clock_ms: Callable[[], int],
        stale_grace_ms: int = DEFAULT_STALE_GRACE_MS,
    ) -> None:
        if stale_grace_ms < 0:
            raise ValueError(f"stale_grace_ms must be >= 0, got {stale_grace_ms}")
        self._client = client
        self._layouts = _check_layouts(layouts)
        self.stale_grace_ms = stale_grace_ms
        self._windowed = {
            name: tuple(i for i, f in enumerate(lay.features) if f.windowed)
            for name, lay in self._layouts.items()
        }
        self._prefixes = {name: _key_prefix(lay) for name, lay in self._layouts.items()}
        self._names = {name: lay.feature_names for name, lay in self._layouts.items()}
        self._clock_ms = clock_ms
        # Cluster clients cannot MGET across slots; they split the keys per slot instead.
        self._mget_name = "mget_nonatomic" if hasattr(client, "mget_nonatomic") else "mget"

    def layout(self, view: str) -> ViewLayout:
        """The layout of ``view``; raises ``UnknownLayoutError`` naming the known views."""
        try:
            return self._layouts[view]
        except KeyError:
            raise UnknownLayoutError(view, list(self._layouts)) from None

    def _plan(self, view: str, entities: Sequence[str], features: Sequence[str] | None) -> _Plan:
        layout = self.layout(view)
        prefix = self._prefixes[view]
        try:
            keys = [prefix + e.encode("utf-8", "surrogateescape") + b"}" for e in entities]
        except UnicodeEncodeError:
            keys = [prefix + _entity_bytes(e) + b"}" for e in entities]  # names the bad one
        all_names = self._names[view]
        windowed = frozenset(all_names[i] for i in self._windowed[view])
        if features is None:
            return _Plan(
                view, layout, tuple(entities), keys, all_names, None,
                tuple(n for n in all_names if n in windowed),
            )  # fmt: skip
        position = {name: i for i, name in enumerate(all_names)}
        unknown = [f for f in features if f not in position]
        if unknown:
            raise UnknownFeatureError(view, unknown, all_names)
        names = tuple(features)
        return _Plan(
            view, layout, tuple(entities), keys, names, tuple(position[f] for f in names),
            tuple(n for n in names if n in windowed),
        )  # fmt: skip

    def _stale_bounds(
        self, layout: ViewLayout, windowed: bool, now: int, max_staleness_ms: int | None
    ) -> tuple[int, int]:
        """``(stale_before, null_before)``: a record's windowed values are stale when its
        ``valid_until`` (>= 0) is below the first, and null when also below the second (a
        request's ``max_staleness_ms``); -1: never."""
        if not windowed:
            return -1, -1
        stale_before = now - layout.lateness_ms - self.stale_grace_ms
        if max_staleness_ms is None:
            return stale_before, -1
        null_before = now - max_staleness_ms
        return max(stale_before, null_before), null_before

    def _decode(
        self, plan: _Plan, raws: Sequence[bytes | None], max_staleness_ms: int | None = None
    ) -> list[Lookup]:
        now = self._clock_ms()
        view = plan.view
        ttl_ms = plan.layout.ttl_seconds * 1000
        names = plan.names
        width = len(plan.layout.features)
        indices = plan.indices
        missing_values = dict.fromkeys(names)
        not_found: dict[str, FeatureStatus] = dict.fromkeys(names, "not_found")
        expired: dict[str, FeatureStatus] = dict.fromkeys(names, "expired")
        present: dict[str, FeatureStatus] = dict.fromkeys(names, "present")
        windowed = plan.windowed
        stale: dict[str, FeatureStatus] = {**present, **dict.fromkeys(windowed, "stale")}
        stale_before, null_before = self._stale_bounds(
            plan.layout, bool(windowed), now, max_staleness_ms
        )
        unpack = _HEADER.unpack_from
        unpack_valid = _VALID_UNTIL.unpack_from
        loads = orjson.loads
        out: list[Lookup] = []
        append = out.append
        if len(raws) != len(plan.entities):
            raise ValueError(f"{len(raws)} replies for {len(plan.entities)} keys")
        for entity, raw in zip(plan.entities, raws):  # noqa: B905 (lengths checked above)
            if raw is None:
                append(
                    {
                        "view": view,
                        "entity": entity,
                        "found": False,
                        "as_of": None,
                        "valid_until": None,
                        "age_ms": None,
                        "features": missing_values.copy(),
                        "status": not_found.copy(),
                    }
                )
                continue
            as_of = unpack(raw)[0]
            if raw[_OLD_HEADER_SIZE] == _OPEN_BRACKET:
                valid_until, body = -1, _OLD_HEADER_SIZE
            else:
                valid_until, body = unpack_valid(raw, _OLD_HEADER_SIZE)[0], HEADER_SIZE
            if ttl_ms and as_of + ttl_ms < now:
                append(
                    {
                        "view": view,
                        "entity": entity,
                        "found": True,
                        "as_of": as_of,
                        "valid_until": valid_until if valid_until >= 0 else None,
                        "age_ms": now - as_of,
                        "features": missing_values.copy(),
                        "status": expired.copy(),
                    }
                )
                continue
            values = loads(raw[body:])
            if len(values) != width:
                raise ValueError(
                    f"record of {view!r} for entity {entity!r} has {len(values)} values; "
                    f"the layout has {width} features (a layout change needs a new version)"
                )
            if indices is not None:
                values = [values[i] for i in indices]
            features = dict(zip(names, values))  # noqa: B905 (width checked)
            if 0 <= valid_until < stale_before:
                status = stale.copy()
                if valid_until < null_before:
                    features.update(dict.fromkeys(windowed))
            else:
                status = present.copy()
            append(
                {
                    "view": view,
                    "entity": entity,
                    "found": True,
                    "as_of": as_of,
                    "valid_until": valid_until if valid_until >= 0 else None,
                    "age_ms": now - as_of,
                    "features": features,
                    "status": status,
                }
            )
        return out

    # Several views' records in one MGET (a feature service's lookup): the caller joins
    # ``record_keys`` of each view, reads them with ``mget`` and decodes each view's share with
    # ``record_values``, with one ``now_ms()`` for all.

    def record_keys(self, view: str, entities: Sequence[str]) -> list[bytes]:
        """The record keys of ``entities`` of ``view`` (raises ``UnknownLayoutError``,
        ``InvalidEntityError``)."""
        prefix = self._prefixes.get(view)
        if prefix is None:
            self.layout(view)  # names the known views
        assert prefix is not None
        try:
            return [prefix + e.encode("utf-8", "surrogateescape") + b"}" for e in entities]
        except UnicodeEncodeError:
            return [prefix + _entity_bytes(e) + b"}" for e in entities]  # names the bad one

    def record_values(
        self,
        view: str,
        raws: Sequence[bytes | None],
        now: int,
        max_staleness_ms: int | None = None,
    ) -> list[tuple[int | None, list[Any] | None, bool]]:
        """Each raw record of ``view`` as ``(as_of, values, stale)``, values in the view's
        feature order: ``(None, None, False)`` when not found, ``(as_of, None, False)`` when
        expired; ``stale``: its windowed values are stale (null past ``max_staleness_ms``), as
        the lookups report them."""
        layout = self.layout(view)
        ttl_ms = layout.ttl_seconds * 1000
        width = len(layout.features)
        windowed = self._windowed[view]
        stale_before, null_before = self._stale_bounds(
            layout, bool(windowed), now, max_staleness_ms
        )
        unpack = _HEADER.unpack_from
        unpack_valid = _VALID_UNTIL.unpack_from
        loads = orjson.loads
        out: list[tuple[int | None, list[Any] | None, bool]] = []
        for raw in raws:
            if raw is None:
                out.append((None, None, False))
                continue
            as_of = unpack(raw)[0]
            if ttl_ms and as_of + ttl_ms < now:
                out.append((as_of, None, False))
                continue
            if raw[_OLD_HEADER_SIZE] == _OPEN_BRACKET:
                valid_until, body = -1, _OLD_HEADER_SIZE
            else:
                valid_until, body = unpack_valid(raw, _OLD_HEADER_SIZE)[0], HEADER_SIZE
            values = loads(raw[body:])
            if len(values) != width:
                raise ValueError(
                    f"record of {view!r} has {len(values)} values; the layout has {width} "
                    "features (a layout change needs a new version)"
                )
            stale = 0 <= valid_until < stale_before
            if stale and valid_until < null_before:
                for i in windowed:
                    values[i] = None
            out.append((as_of, values, stale))
        return out

    def now_ms(self) -> int:
        """The reader's clock (ages and expiry are computed against it)."""
        return self._clock_ms()


class RedisFeatureReader(_ReaderBase):
    """Reads records with a sync client: one ``MGET`` round trip per call."""

    def __init__(
        self,
        client: Any,
        layouts: Mapping[str, ViewLayout],
        *,
        clock_ms: Callable[[], int] = now_ms,
        stale_grace_ms: int = DEFAULT_STALE_GRACE_MS,
    ) -> None:
        super().__init__(client, layouts, clock_ms=clock_ms, stale_grace_ms=stale_grace_ms)

    def get_many(
        self,
        view: str,
        entities: Sequence[str],
        features: Sequence[str] | None = None,
        *,
        max_staleness_ms: int | None = None,
    ) -> list[Lookup]:
        """Lookups of ``entities`` in request order; unknown entities have ``found=False``."""
        plan = self._plan(view, entities, features)
        if not plan.keys:
            return []
        raws = getattr(self._client, self._mget_name)(plan.keys)
        return self._decode(plan, raws, max_staleness_ms)

    def get(self, view: str, entity: str, features: Sequence[str] | None = None) -> Lookup:
        return self.get_many(view, [entity], features)[0]

    def mget(self, keys: list[bytes]) -> list[bytes | None]:
        """The raw records of ``keys`` (:meth:`record_keys`), in one round trip."""
        raws: list[bytes | None] = getattr(self._client, self._mget_name)(keys) if keys else []
        return raws


class AsyncRedisFeatureReader(_ReaderBase):
    """Reads records with a ``redis.asyncio`` client: one ``MGET`` round trip per call."""

    def __init__(
        self,
        client: Any,
        layouts: Mapping[str, ViewLayout],
        *,
        clock_ms: Callable[[], int] = now_ms,
        stale_grace_ms: int = DEFAULT_STALE_GRACE_MS,
    ) -> None:
        super().__init__(client, layouts, clock_ms=clock_ms, stale_grace_ms=stale_grace_ms)

    async def get_many(
        self,
        view: str,
        entities: Sequence[str],
        features: Sequence[str] | None = None,
        *,
        max_staleness_ms: int | None = None,
    ) -> list[Lookup]:
        """Lookups of ``entities`` in request order; unknown entities have ``found=False``."""
        plan = self._plan(view, entities, features)
        if not plan.keys:
            return []
        raws = await getattr(self._client, self._mget_name)(plan.keys)
        return self._decode(plan, raws, max_staleness_ms)

    async def get(self, view: str, entity: str, features: Sequence[str] | None = None) -> Lookup:
        return (await self.get_many(view, [entity], features))[0]

    async def mget(self, keys: list[bytes]) -> list[bytes | None]:
        """The raw records of ``keys`` (:meth:`record_keys`, of any views), in one round trip
        (one per node on a cluster client)."""
        raws: list[bytes | None] = (
            await getattr(self._client, self._mget_name)(keys) if keys else []
        )
        return raws

    async def ping(self) -> bool:
        return bool(await self._client.ping())


# --------------------------------------------------------------------------------------------
# Connections

_CONNECT_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
    "socket_keepalive": True,
    "health_check_interval": 30,
    "decode_responses": False,
}


# ``?cluster=true`` in FRESHET_REDIS_URL selects Redis Cluster clients (any node's address
# works: the client discovers the others with CLUSTER SLOTS). Explicit rather than detected,
# so connecting stays lazy and a wrong guess never depends on which node answered first;
# ``freshet doctor`` reports a cluster node reached without the flag (and the reverse).
CLUSTER_PARAM = "cluster"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

RedisClient = redis.Redis | redis.cluster.RedisCluster
AsyncRedisClient = redis.asyncio.Redis | redis.asyncio.RedisCluster


def split_cluster_url(url: str) -> tuple[str, bool]:
    """``(url without the cluster parameter, whether it asks for Redis Cluster)``.

    Raises ``ValueError`` naming the value when ``cluster=`` is neither true nor false.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    flags = [value.strip().lower() for name, value in query if name == CLUSTER_PARAM]
    if not flags:
        return url, False
    if any(flag not in _TRUE | _FALSE for flag in flags):
        raise ValueError(
            f"Redis URL parameter {CLUSTER_PARAM}={flags[-1]!r} is not a boolean; "
            "use cluster=true (Redis Cluster) or leave it out (one server)"
        )
    rest = urlencode([(name, value) for name, value in query if name != CLUSTER_PARAM])
    return urlunsplit(parts._replace(query=rest)), flags[-1] in _TRUE


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` selects Redis Cluster (``?cluster=true``)."""
    return split_cluster_url(url)[1]


def connect(url: str) -> RedisClient:
    """A sync client for ``url`` (``redis://``, ``rediss://``, ``unix://``) with timeouts and
    health checks. It connects lazily; call ``.ping()`` to fail fast. With ``?cluster=true``
    it is a ``RedisCluster`` client, which reads the cluster's slot map when built (and so
    raises ``RedisClusterException`` when no node answers)."""
    plain, cluster = split_cluster_url(url)
    if cluster:
        return redis.cluster.RedisCluster.from_url(plain, **_CONNECT_OPTIONS)
    return redis.Redis.from_url(plain, **_CONNECT_OPTIONS)


def connect_async(url: str) -> AsyncRedisClient:
    """The ``redis.asyncio`` counterpart of ``connect`` (a cluster client connects on its
    first command)."""
    plain, cluster = split_cluster_url(url)
    if cluster:
        return redis.asyncio.RedisCluster.from_url(plain, **_CONNECT_OPTIONS)
    return redis.asyncio.Redis.from_url(plain, **_CONNECT_OPTIONS)
