"""Settings read from the environment once, at the edge, from an injectable mapping.

Tests pass a dict instead of patching ``os.environ``::

    settings = Settings.from_env({"FRESHET_REDIS_URL": "redis://127.0.0.1:6390/0"})
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Settings"]

_KAFKA_PASSTHROUGH_PREFIX = "FRESHET_KAFKA_CONFIG_"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Where freshet finds Kafka, Redis and the offline log."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    redis_url: str = "redis://127.0.0.1:6379/0"
    offline_dir: Path = Path("data/offline")
    # Raw ``FRESHET_API_KEYS`` value (parsed by serving.auth); empty means no auth.
    api_keys: str = ""
    # Extra librdkafka settings (security and tuning), e.g.
    # FRESHET_KAFKA_CONFIG_SASL_MECHANISM=PLAIN becomes {"sasl.mechanism": "PLAIN"}.
    # Values are secrets: never log them.
    kafka_config: Mapping[str, str] = field(default_factory=dict, repr=False)
    # A Confluent-compatible schema registry: Avro views then read the Confluent wire format
    # (magic byte + schema id) with each id's registered schema. Unset: schemaless Avro.
    schema_registry_url: str | None = None

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
            api_keys=env.get("FRESHET_API_KEYS", ""),
            kafka_config=kafka_config,
            schema_registry_url=env.get("FRESHET_SCHEMA_REGISTRY_URL") or None,
        )

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings for any client: bootstrap plus the pass-through settings."""
        return {"bootstrap.servers": self.kafka_bootstrap, **self.kafka_config}
