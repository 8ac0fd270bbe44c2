"""Optional API keys, each scoped to views (``FRESHET_API_KEYS``).

Format: entries separated by ``;``, each ``KEY:SCOPE`` where ``SCOPE`` is ``*`` (every view) or
a comma-separated list of view names::

    FRESHET_API_KEYS="k_live_3f9a:card_txn,card_txn_json;k_ops_77:*"

Unset or empty: no authentication. Clients send ``Authorization: Bearer KEY`` (or
``X-API-Key: KEY``). A missing or unknown key is refused with 401, a known key outside its
scope with 403. The presented key is compared with every configured key using
``hmac.compare_digest`` (no early exit, so timing does not tell how much of a key matched or
which one), and keys never appear in logs, errors or reprs.
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
    views: frozenset[str] | None  # None: every view


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
                    "view names separated by commas)"
                )
            if scope == "*":
                views = None
            else:
                views = frozenset(v.strip() for v in scope.split(",") if v.strip())
                if not views:
                    raise ValueError(f"FRESHET_API_KEYS entry {position} has an empty scope")
            keys.append(_Key(secret.encode("utf-8"), views))
        return cls(tuple(keys))

    def _match(self, presented: bytes | None) -> _Key | None:
        if presented is None:
            return None
        found: _Key | None = None
        for key in self.keys:  # compare with all of them: the time does not depend on which
            if hmac.compare_digest(presented, key.secret):
                found = key
        return found

    def check(self, presented: bytes | None, view: str | None) -> None:
        """Raise ``Unauthorized``/``Forbidden`` unless ``presented`` may read ``view``
        (``view=None``: any valid key may, e.g. to list views). No-op when disabled."""
        if not self.keys:
            return
        key = self._match(presented)
        if key is None:
            raise Unauthorized("missing API key" if presented is None else "invalid API key")
        if view is not None and key.views is not None and view not in key.views:
            raise Forbidden(f"this API key may not read view {view!r}")


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
