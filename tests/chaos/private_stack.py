"""A Kafka broker (and Redis) of a test's own, started with the dev stack's code on free ports.

The shared broker must never be restarted under other tests; tests that stop Kafka or need a
listener the shared one does not have (SASL) start their own here. The jars come from the
shared stack's cache (nothing is downloaded); the broker's ``server.properties`` template is the
dev stack's, optionally with extra lines (an extra listener, say).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redis_servers import free_port

from freshet.ops import devstack

__all__ = ["SASL_PASSWORD", "SASL_USER", "private_stack", "sasl_listener_lines"]

SASL_USER = "freshet-flow"
SASL_PASSWORD = "kafka-Sasl-pw-7Qx"  # a value to look for in logs and metrics


def sasl_listener_lines(sasl_port: int) -> list[str]:
    """Properties adding a SASL_PLAINTEXT (PLAIN) listener on ``sasl_port`` beside PLAINTEXT
    (which stays for the broker itself and the stack's health checks)."""
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'user_{SASL_USER}="{SASL_PASSWORD}";'
    )
    return [
        "listeners=PLAINTEXT://127.0.0.1:{kafka_port},CONTROLLER://127.0.0.1:{controller_port},"
        f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
        "advertised.listeners=PLAINTEXT://127.0.0.1:{kafka_port},"
        "CONTROLLER://127.0.0.1:{controller_port},"
        f"SASL_PLAINTEXT://127.0.0.1:{sasl_port}",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
        "SASL_PLAINTEXT:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms=PLAIN",
        f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}",
    ]


@contextmanager
def private_stack(
    shared: devstack.StackConfig, workdir: Path, *, extra_properties: list[str] | None = None
) -> Iterator[devstack.StackConfig]:
    """A running Kafka + Redis on free ports under ``workdir``; stopped (by pid) on exit.

    ``extra_properties`` replace the template's lines with the same key and add the others.
    """
    deploy = workdir / "deploy"
    deploy.mkdir(parents=True)
    for name in ("pom.xml", "log4j2.yaml"):
        shutil.copy(shared.deploy_dir / name, deploy / name)
    template = (shared.deploy_dir / "server.properties.template").read_text().splitlines()
    extra = extra_properties or []
    keys = {line.split("=", 1)[0] for line in extra}
    lines = [line for line in template if line.split("=", 1)[0] not in keys] + extra
    (deploy / "server.properties.template").write_text("\n".join(lines) + "\n")
    config = devstack.StackConfig(
        dev_dir=workdir / "dev",
        kafka_port=free_port(),
        controller_port=free_port(),
        redis_port=free_port(),
        deploy_dir=deploy,
        lib_dir_override=shared.lib_dir,
    )
    try:
        devstack.up(config)
        yield config
    finally:
        devstack.down(config, timeout=30)
