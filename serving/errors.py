"""The endpoint's errors: each one is an HTTP status, a short code and a message for the user.

    HttpError                 status, code, message, headers
     ├── 400 bad_request      body is not JSON
     ├── 401/403              (from freshet.serving.auth: AuthError)
     ├── 404 unknown_view     names the known views; also unknown paths (not_found)
     ├── 405 method_not_allowed
     ├── 413 too_large        batch over the maximum, or body over the byte limit
     ├── 422 invalid_request  valid JSON of the wrong shape; unknown features (names known ones)
     └── 503 unavailable      Redis unreachable; with Retry-After

Responses carry ``{"error": code, "message": message}``; a 500 says only "internal error" and
the details go to the server log, never to the client.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["MAX_STALENESS_LIMIT_MS", "HttpError", "json_body", "json_object", "max_staleness"]


class HttpError(Exception):
    """An error answered as ``status`` with ``{"error": code, "message": message}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def json_body(body: bytes) -> Any:
    """A request body's JSON value; :class:`HttpError` 400 when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, "bad_request", f"request body is not valid JSON: {exc}") from None


def json_object(body: bytes, allowed: tuple[str, ...]) -> dict[str, Any]:
    """A request body as a JSON object with fields among ``allowed``: 400 when it is not JSON,
    422 when it is not an object (``allowed[0]`` names the list it should hold) or has other
    fields."""
    request = json_body(body)
    if not isinstance(request, dict):
        raise HttpError(422, "invalid_request", f'body must be {{"{allowed[0]}": [...]}}')
    unknown = set(request) - set(allowed)
    if unknown:
        raise HttpError(
            422,
            "invalid_request",
            f"unknown field(s) {', '.join(sorted(map(repr, unknown)))}; "
            f"allowed: {', '.join(allowed)}",
        )
    return request


# A day: a bound past which a staleness limit means nothing (values are that old at most by TTL).
MAX_STALENESS_LIMIT_MS = 86_400_000


def max_staleness(value: Any, where: str) -> int | None:
    """A request's ``max_staleness_ms`` (query parameter or body field ``where``): None when
    absent, else an integer of milliseconds in ``[0, 86400000]``; 422 naming it otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        value = int(text) if text.isdigit() else value
    if type(value) is not int or not 0 <= value <= MAX_STALENESS_LIMIT_MS:
        raise HttpError(
            422,
            "invalid_request",
            f"{where} must be a whole number of milliseconds from 0 to "
            f"{MAX_STALENESS_LIMIT_MS}; got {value!r}",
        )
    return value
