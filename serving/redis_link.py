"""One pipelined Redis connection shared by all requests of an event loop.

Why not ``redis.asyncio``: an ``await client.mget(...)`` through redis-py's asyncio client
spends several times this module's whole round trip in Python (pool checkout, retry and
observability wrappers, stream reader), which caps a worker's lookups/s
(``tests/bench/README.md``). The endpoint issues only ``MGET`` and ``PING``, so it needs no
more than this: requests write their command to one socket as they come and wait on a future;
replies, parsed by hiredis, resolve the futures in order (Redis answers a connection in command
order).

Connection handling: connects lazily (``socket_connect_timeout``), authenticates and selects
the database from the URL (``redis://[user:password@]host:port/db``, ``rediss://`` for TLS,
``unix:///path?db=N``). A connection error, a stall (requests waiting and no reply for
``socket_timeout``: the link is presumed dead; one watchdog timer per connection checks this,
so timeouts cost nothing per request) or a loop change (a test client's new event loop) drops
the connection and fails every waiting request with ``redis.exceptions.ConnectionError`` /
``TimeoutError``; the next request reconnects. Cluster deployments use
``redis.asyncio.RedisCluster`` instead (its ``mget_nonatomic`` is what the feature reader
calls).

The hot-entity cache (:mod:`freshet.serving.cache`) uses a second link as its tracking
connection: ``resp3=True`` speaks RESP3 (``HELLO 3``), ``setup`` commands (``CLIENT TRACKING
ON``) run on every (re)connect, push messages (invalidations) go to ``on_push`` in stream order
with the replies, and ``on_lost`` hears of the connection's loss at once.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RedisLink"]

_PUSH = hiredis.PushNotification


class _Protocol(asyncio.Protocol):
    """Replies resolve queued futures in order; a watchdog fails them all when Redis makes
    no progress for ``timeout`` seconds (cheaper than a timeout context per request)."""

    def __init__(
        self,
        timeout: float,
        on_push: Callable[[list[Any]], None] | None = None,
        on_lost: Callable[[Exception], None] | None = None,
    ) -> None:
        self.reader = hiredis.Reader()
        self.on_push = on_push
        self.on_lost = on_lost
        self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self.timeout = timeout
        self.progress_at = 0.0  # loop time of the last reply, or of the first queued request
        self._watchdog: asyncio.TimerHandle | None = None
        self._outbox: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, loop: asyncio.AbstractEventLoop, packed: bytes) -> asyncio.Future[Any]:
        if self.lost is not None:
            raise self.lost
        waiter = loop.create_future()
        if not self.waiters:
            self.progress_at = loop.time()
            if self._watchdog is None:
                self._watchdog = loop.call_later(self.timeout, self._watch, loop)
        self.waiters.append(waiter)
        # Commands of all requests started in this loop iteration leave in one write: a
        # syscall costs ~25 µs on this VM kind, more than the rest of a lookup's Redis work.
        if not self._outbox:
            loop.call_soon(self._flush)
        self._outbox.append(packed)
        return waiter

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if self.transport is not None and self.lost is None:
            self.transport.write(b"".join(outbox) if len(outbox) > 1 else outbox[0])

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watchdog = None
        if not self.waiters:
            return
        stalled = loop.time() - self.progress_at
        if stalled >= self.timeout:
            self.fail(RedisTimeoutError(f"no reply from Redis within {self.timeout}s"))
            if self.transport is not None:
                self.transport.close()
            return
        self._watchdog = loop.call_later(self.timeout - stalled, self._watch, loop)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        waiters = self.waiters
        reader.feed(data)
        got = False
        while (reply := reader.gets()) is not False:
            got = True
            if reply.__class__ is _PUSH:  # RESP3 out-of-band message (tracking invalidation)
                if self.on_push is not None:
                    self.on_push(reply)
                continue
            waiter = waiters.popleft()
            if waiter.done():  # cancelled by its request
                continue
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_exception(ResponseError(str(reply)))
            else:
                waiter.set_result(reply)
        if got and self.transport is not None:
            self.progress_at = asyncio.get_running_loop().time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis closed: {exc or 'EOF or by us'}"))

    def fail(self, error: Exception) -> None:
        if self.lost is None:
            self.lost = error
            if self.on_lost is not None:
                self.on_lost(error)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)


class RedisLink:
    """A minimal async Redis client for the endpoint: ``mget``, ``ping``, ``close``."""

    def __init__(
        self,
        url: str,
        *,
        socket_connect_timeout: float = 1.0,
        socket_timeout: float = 2.0,
        resp3: bool = False,
        setup: Sequence[tuple[bytes, ...]] = (),
        on_push: Callable[[list[Any]], None] | None = None,
        on_lost: Callable[[Exception], None] | None = None,
    ) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"unsupported Redis URL scheme {parts.scheme!r} in FRESHET_REDIS_URL; "
                "use redis://, rediss:// or unix://"
            )
        self._scheme = parts.scheme
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._path = unquote(parts.path)
        db_text = query.get("db", [""])[0] or (
            parts.path.lstrip("/") if parts.scheme != "unix" else ""
        )
        try:
            self._db = int(db_text or 0)
        except ValueError:
            raise ValueError(f"Redis URL database {db_text!r} is not a number") from None
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._connect_timeout = socket_connect_timeout
        self._timeout = socket_timeout
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        # For a tracking connection (freshet.serving.cache): RESP3 (``HELLO 3``), commands sent
        # on every (re)connect after AUTH/SELECT, out-of-band push messages, and loss. Replies
        # of ``setup`` on the last connect: ``setup_replies``.
        self._resp3 = resp3
        self._setup = tuple(setup)
        self._on_push = on_push
        self._on_lost = on_lost
        self.setup_replies: list[Any] = []

    def __repr__(self) -> str:  # never shows the password
        where = self._path if self._scheme == "unix" else f"{self._host}:{self._port}"
        return f"RedisLink({self._scheme}://{where}/{self._db})"

    async def mget(self, keys: list[bytes]) -> list[bytes | None]:
        reply: list[bytes | None] = await self._call(b"MGET", *keys)
        return reply

    async def ping(self) -> bool:
        return bool(await self._call(b"PING") == b"PONG")

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

    async def _call(self, *args: bytes) -> Any:
        protocol = self._protocol
        loop = asyncio.get_running_loop()
        if protocol is None or protocol.lost is not None or self._loop is not loop:
            protocol = await self._reconnect(loop)
        return await protocol.send(loop, hiredis.pack_command(args))  # type: ignore[arg-type]

    async def _reconnect(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        if self._protocol is not None and self._loop is not loop:
            # Created on another (now finished) event loop: its transport cannot be used here.
            self._protocol = None
            self._connecting = None
        if self._connecting is not None and self._loop is loop:
            return await asyncio.shield(self._connecting)  # join a connect in progress
        self._loop = loop
        self._connecting = loop.create_future()
        connecting = self._connecting
        try:
            protocol = await self._open(loop)
        except Exception as exc:
            self._connecting = None
            error: Exception = exc
            if isinstance(exc, OSError | TimeoutError):
                error = RedisConnectionError(f"cannot connect to {self!r}: {exc}")
            connecting.set_exception(error)
            connecting.exception()  # retrieved: no "never retrieved" warning if nobody joined
            raise error from exc
        except BaseException:  # cancelled: whoever joined retries on its own
            self._connecting = None
            connecting.cancel()
            raise
        self._protocol = protocol
        self._connecting = None
        connecting.set_result(protocol)
        return protocol

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        def make() -> _Protocol:
            return _Protocol(self._timeout, self._on_push, self._on_lost)

        async with asyncio.timeout(self._connect_timeout):
            if self._scheme == "unix":
                _, protocol = await loop.create_unix_connection(make, self._path)
            else:
                context = ssl.create_default_context() if self._scheme == "rediss" else None
                _, protocol = await loop.create_connection(
                    make, self._host, self._port, ssl=context
                )
        setup: list[tuple[bytes, ...]] = []
        auth: tuple[bytes, ...] = ()
        if self._password is not None:
            auth = (b"AUTH", (self._username or "default").encode(), self._password.encode())
        if self._resp3:
            setup.append((b"HELLO", b"3", *auth))
        elif auth:
            setup.append(auth)
        if self._db:
            setup.append((b"SELECT", str(self._db).encode()))
        replies = []
        for command in (*setup, *self._setup):
            try:
                replies.append(
                    await protocol.send(loop, hiredis.pack_command(command))  # type: ignore[arg-type]
                )
            except ResponseError:
                assert protocol.transport is not None
                protocol.transport.close()
                raise
        self.setup_replies = replies[len(setup) :]
        return protocol
