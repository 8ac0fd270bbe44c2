"""Settings read from the environment once, at the edge, from an injectable mapping.

Tests pass a dict instead of patching ``os.environ``::

    settings = Settings.from_env({"FRESHET_REDIS_URL": "redis://127.0.0.1:6390/0"})
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Settings", "SettingsError"]

_KAFKA_PASSTHROUGH_PREFIX = "FRESHET_KAFKA_CONFIG_"


class SettingsError(ValueError):
    """An environment variable with a value freshet cannot use; the message names it."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Where freshet finds Kafka, Redis and the offline log."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    offline_dir: Path = Path("data/offline")
    # Extra librdkafka settings (security and tuning), e.g.
    # FRESHET_KAFKA_CONFIG_SASL_MECHANISM=PLAIN becomes {"sasl.mechanism": "PLAIN"}.
    # Values are secrets: never log them.
    kafka_config: Mapping[str, str] = field(default_factory=dict, repr=False)
    # A Confluent-compatible schema registry: Avro views then read the Confluent wire format
    # (magic byte + schema id) with each id's registered schema. Unset: schemaless Avro.
    schema_registry_url: str | None = None
    # Seconds a command waits for Kafka to answer at start before it exits with a clear error
    # (FRESHET_KAFKA_TIMEOUT); a running flow keeps retrying a lost broker without a bound.
    kafka_timeout_s: float = 10.0
    # How long past a windowed value's valid_until, beyond its view's allowed lateness, a
    # lookup still calls it present (FRESHET_STALE_GRACE_MS); after that it is "stale".
    stale_grace_ms: int = 5000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        kafka_config = {
            name[len(_KAFKA_PASSTHROUGH_PREFIX) :].lower().replace("_", "."): value
            for name, value in env.items()
            if name.startswith(_KAFKA_PASSTHROUGH_PREFIX)
        }
        return cls(
            kafka_bootstrap=env.get("FRESHET_KAFKA_BOOTSTRAP", cls.kafka_bootstrap),
            redis_url=env.get("FRESHET_REDIS_URL", cls.redis_url),
            offline_dir=Path(env.get("FRESHET_OFFLINE_DIR", str(cls.offline_dir))),
            kafka_config=kafka_config,
            schema_registry_url=env.get("FRESHET_SCHEMA_REGISTRY_URL") or None,
            kafka_timeout_s=_seconds(env, "FRESHET_KAFKA_TIMEOUT", cls.kafka_timeout_s),
            stale_grace_ms=_milliseconds(env, "FRESHET_STALE_GRACE_MS", cls.stale_grace_ms),
        )

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings for any client: bootstrap plus the pass-through settings."""
        return {"bootstrap.servers": self.kafka_bootstrap, **self.kafka_config}


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SettingsError(f"{name}={text!r} is not a number of seconds above 0")
    return value


def _milliseconds(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit():
        raise SettingsError(f"{name}={text!r} is not a whole number of milliseconds >= 0")
    return int(text)
