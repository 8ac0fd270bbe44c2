"""Optional API keys, each scoped to views (``FRESHET_API_KEYS``).

Format: entries separated by ``;``, each ``KEY:SCOPE`` where ``SCOPE`` is a comma-separated
list of grants, each a view name or ``*`` (every view), optionally followed by ``=r`` (read,
the default), ``=w`` (write: ``POST /v1/ingest/{view}``) or ``=rw`` (both)::

    FRESHET_API_KEYS="k_live_3f9a:card_txn,card_txn_json;k_ingest_5c:card_txn=w;k_ops_77:*=rw"

A grant without ``=`` reads only, so keys written before write scopes existed keep their
meaning. Unset or empty: no authentication (reads and writes are open).

Clients send ``Authorization: Bearer KEY`` (or ``X-API-Key: KEY``). A missing or unknown key
is refused with 401, a known key outside its scope (read, or write for ingest) with 403. The
presented key is compared with every configured key using ``hmac.compare_digest`` (no early
exit, so timing does not tell how much of a key matched or which one), and keys never appear
in logs, errors or reprs.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ApiKeys", "AuthError", "Forbidden", "Unauthorized", "presented_key"]


class AuthError(Exception):
    """A request is not allowed; ``status`` is its HTTP status."""

    status = 401


class Unauthorized(AuthError):
    status = 401


class Forbidden(AuthError):
    status = 403


@dataclass(frozen=True, slots=True)
class _Key:
    secret: bytes = field(repr=False)
    views: frozenset[str] | None  # the views it reads; None: every view
    writes: frozenset[str] | None = frozenset()  # the views it writes; None: every view


_MODES = {"r": (True, False), "w": (False, True), "rw": (True, True), "wr": (True, True)}


def _grants(scope: str, position: int) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """``(read views, write views)`` of a scope (None: every view)."""
    reads: set[str] = set()
    writes: set[str] = set()
    read_all = write_all = False
    for item in scope.split(","):
        view, sep, mode = (part.strip() for part in item.partition("="))
        if not view:
            continue
        if sep and mode not in _MODES:
            raise ValueError(
                f"FRESHET_API_KEYS entry {position} grants {mode!r} on {view!r}; "
                "use VIEW (read), VIEW=r, VIEW=w or VIEW=rw"
            )
        read, write = _MODES[mode] if sep else (True, False)
        if read:
            read_all = read_all or view == "*"
            reads.add(view)
        if write:
            write_all = write_all or view == "*"
            writes.add(view)
    if not reads and not writes:
        raise ValueError(f"FRESHET_API_KEYS entry {position} has an empty scope")
    return (None if read_all else frozenset(reads)), (None if write_all else frozenset(writes))


@dataclass(frozen=True, slots=True)
class ApiKeys:
    """The configured keys; ``ApiKeys.parse("")`` disables authentication."""

    keys: tuple[_Key, ...] = field(repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiKeys:
        """The keys of ``FRESHET_API_KEYS`` (unset or empty: no auth)."""
        env = os.environ if environ is None else environ
        return cls.parse(env.get("FRESHET_API_KEYS", ""))

    @classmethod
    def parse(cls, text: str) -> ApiKeys:
        """Parse ``FRESHET_API_KEYS``; errors name the entry by position, never the key."""
        keys: list[_Key] = []
        for position, entry in enumerate(text.split(";"), start=1):
            entry = entry.strip()
            if not entry:
                continue
            secret, sep, scope = entry.partition(":")
            secret, scope = secret.strip(), scope.strip()
            if not sep or not secret or not scope:
                raise ValueError(
                    f"FRESHET_API_KEYS entry {position} is not KEY:SCOPE (SCOPE is '*' or "
                    "view names separated by commas, each optionally =r, =w or =rw)"
                )
            views, writes = _grants(scope, position)
            keys.append(_Key(secret.encode("utf-8"), views, writes))
        return cls(tuple(keys))

    def _match(self, presented: bytes | None) -> _Key | None:
        if presented is None:
            return None
        found: _Key | None = None
        for key in self.keys:  # compare with all of them: the time does not depend on which
            if hmac.compare_digest(presented, key.secret):
                found = key
        return found

    def check(self, presented: bytes | None, view: str | None, *, write: bool = False) -> None:
        """Raise ``Unauthorized``/``Forbidden`` unless ``presented`` may read ``view`` (with
        ``write=True``: write it). ``view=None``: any valid key may, e.g. to list views.
        No-op when disabled."""
        if not self.keys:
            return
        key = self._match(presented)
        if key is None:
            raise Unauthorized("missing API key" if presented is None else "invalid API key")
        if view is None:
            return
        allowed = key.writes if write else key.views
        if allowed is not None and view not in allowed:
            raise Forbidden(f"this API key may not {'write' if write else 'read'} view {view!r}")


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key an ASGI request presents: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``
    (UTF-8 bytes, compared with the UTF-8 encoding of the configured keys). Credentials in
    both headers (or twice) are refused rather than guessing which one counts."""
    found: list[bytes] = []
    for name, value in headers:
        name = name.lower()
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            found.append(token.strip() if scheme.lower() == b"bearer" else b"")
        elif name == b"x-api-key":
            found.append(value.strip())
    if len(found) > 1:
        raise Unauthorized("send the API key once: Authorization: Bearer KEY or X-API-Key: KEY")
    return found[0] if found else None
