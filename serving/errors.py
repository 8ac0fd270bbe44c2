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

__all__ = ["HttpError"]


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
