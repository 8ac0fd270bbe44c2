"""Writer schemas by id from a Confluent-compatible schema registry, for the Confluent wire format.

A record in the Confluent wire format is ``0x00``, a 4-byte big-endian schema id, then the
Avro body written with that schema. With ``FRESHET_SCHEMA_REGISTRY_URL`` set, ``freshet run``
and ``freshet backfill`` read Avro views this way: :class:`SchemaRegistry` fetches each id's
schema once (``GET <url>/schemas/ids/<id>``, the registry's REST API) and the decoder resolves
it against the view's schema (``freshet.decode.decoder.AvroDecoder``): a record written with an
older or newer compatible schema yields the view's fields, one whose id the registry does not know
is dead-lettered.

An unreachable registry is not the record's fault: the fetch is retried with backoff for
``give_up_after_s`` and then :class:`SchemaRegistryUnavailable` stops the flow (nothing is
lost: a restart resumes from the last snapshot). Only this module talks HTTP; it uses the
standard library (one GET per schema id for the life of the process). Credentials in the URL
(``https://user:secret@host``) are sent as HTTP basic auth and never shown in messages.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["SchemaRegistry", "SchemaRegistryError", "SchemaRegistryUnavailable"]

log = logging.getLogger(__name__)


class SchemaRegistryError(ValueError):
    """The registry answered, but not with a usable schema (bad JSON, not Avro)."""


class SchemaRegistryUnavailable(RuntimeError):
    """The registry could not be reached (or kept failing) for ``give_up_after_s``."""


class SchemaRegistry:
    """Fetches and caches writer schemas by id (thread-safe; one fetch per id)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        give_up_after_s: float = 30.0,
        backoff_initial_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise SchemaRegistryError(
                f"schema registry URL {url!r} must start with http:// or https://"
            )
        parts = urlsplit(url.rstrip("/"))
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        # ``url``: where requests go and what messages show (no credentials).
        self.url = urlunsplit(parts._replace(netloc=netloc))
        self._headers = {"Accept": "application/vnd.schemaregistry.v1+json, application/json"}
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        self._timeout_s = timeout_s
        self._give_up_after_s = give_up_after_s
        self._backoff_initial_s = backoff_initial_s
        self._sleep = sleep
        self._lock = threading.Lock()
        self._schemas: dict[int, dict[str, Any] | None] = {}

    def schema(self, schema_id: int) -> dict[str, Any] | None:
        """The Avro schema registered as ``schema_id`` (parsed JSON), or None if the registry
        does not know the id. Raises :class:`SchemaRegistryUnavailable` or
        :class:`SchemaRegistryError`."""
        with self._lock:
            if schema_id not in self._schemas:
                self._schemas[schema_id] = self._fetch(schema_id)
            return self._schemas[schema_id]

    def subjects(self) -> list[str]:
        """``GET /subjects``, once, without retries (``freshet doctor``'s probe). Raises
        ``urllib.error.URLError``/``OSError`` when unreachable, :class:`SchemaRegistryError`
        for an answer that is not a registry's."""
        body = self._get("/subjects")
        try:
            subjects = json.loads(body)
        except ValueError:
            subjects = None
        if not isinstance(subjects, list):
            raise SchemaRegistryError(f"GET /subjects did not answer a JSON list: {body[:100]!r}")
        return subjects

    def _get(self, path: str) -> bytes:
        request = urllib.request.Request(self.url + path, headers=self._headers)
        with urllib.request.urlopen(request, timeout=self._timeout_s) as resp:
            body: bytes = resp.read()
        return body

    def _fetch(self, schema_id: int) -> dict[str, Any] | None:
        path = f"/schemas/ids/{schema_id}"
        url = self.url + path
        started = time.monotonic()
        delay = self._backoff_initial_s
        while True:
            try:
                body = self._get(path)
                break
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None  # unknown id: the record's problem, not the registry's
                problem = f"HTTP {exc.code}"
                if exc.code < 500:
                    raise SchemaRegistryError(f"GET {url} answered {problem}") from exc
            except (urllib.error.URLError, OSError) as exc:
                problem = str(getattr(exc, "reason", exc))
            waited = time.monotonic() - started
            if waited >= self._give_up_after_s:
                raise SchemaRegistryUnavailable(
                    f"schema registry {self.url} unreachable for {waited:.0f} s fetching schema "
                    f"id {schema_id} ({problem}); check FRESHET_SCHEMA_REGISTRY_URL"
                )
            log.warning("schema registry: GET %s failed (%s); retry in %.1f s", url, problem, delay)
            self._sleep(delay)
            delay = min(delay * 2, 5.0)
        try:
            answer = json.loads(body)
            schema = json.loads(answer["schema"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SchemaRegistryError(
                f'GET {url}: expected {{"schema": "<Avro schema JSON>"}}, got {body[:200]!r}'
            ) from exc
        if answer.get("schemaType", "AVRO") != "AVRO" or not isinstance(schema, dict):
            raise SchemaRegistryError(
                f"schema id {schema_id} at {self.url} is not an Avro record schema"
            )
        return schema
