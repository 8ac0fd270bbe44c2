"""``freshet dev up|down|status|logs``: the local Kafka + Redis stack (logic in
freshet.ops.devstack)."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from freshet.ops import devstack, processes

__all__ = ["dev"]

_SERVICES = ("kafka", "redis")


def _echo(message: str) -> None:
    click.echo(message, err=True)


def _stack_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add --dev-dir and the port options to a command; it receives a StackConfig ``config``."""

    @click.option(
        "--dev-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Jars, data, logs, pids [env FRESHET_DEV_DIR; default <repo>/.freshet].",
    )
    @click.option(
        "--kafka-port",
        type=int,
        default=None,
        help="Kafka listener port [env FRESHET_DEV_KAFKA_PORT; default 9092].",
    )
    @click.option(
        "--controller-port",
        type=int,
        default=None,
        help="KRaft controller port [env FRESHET_DEV_CONTROLLER_PORT; default kafka port + 1].",
    )
    @click.option(
        "--redis-port",
        type=int,
        default=None,
        help="Redis port [env FRESHET_DEV_REDIS_PORT; default 6379].",
    )
    @functools.wraps(command)
    def wrapper(
        *,
        dev_dir: Path | None,
        kafka_port: int | None,
        controller_port: int | None,
        redis_port: int | None,
        **kwargs: Any,
    ) -> None:
        try:
            config = devstack.StackConfig.from_env(
                os.environ,
                dev_dir=dev_dir,
                kafka_port=kafka_port,
                controller_port=controller_port,
                redis_port=redis_port,
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        command(config=config, **kwargs)

    return wrapper


@click.group()
def dev() -> None:
    """A real single-node Kafka (KRaft) and Redis on 127.0.0.1, without Docker.

    Kafka's jars come from Maven Central once (needs java and mvn); Redis is Debian's
    redis-server. `up` is idempotent; `down` stops only what `up` started. Every command
    takes --dev-dir and the port options (or the FRESHET_DEV_* variables).
    """


@dev.command()
@_stack_options
def up(*, config: devstack.StackConfig) -> None:
    """Start Kafka and Redis (reusing healthy running ones) and wait until both answer."""
    try:
        devstack.up(config, echo=_echo)
    except devstack.DevStackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"FRESHET_KAFKA_BOOTSTRAP={config.kafka_bootstrap}")
    click.echo(f"FRESHET_REDIS_URL={config.redis_url}")


@dev.command()
@click.option(
    "--timeout",
    type=float,
    default=devstack.STOP_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait after SIGTERM before SIGKILL.",
)
@_stack_options
def down(*, config: devstack.StackConfig, timeout: float) -> None:
    """Stop the Kafka and Redis that `up` started from this dev dir (by pid)."""
    devstack.down(config, echo=click.echo, timeout=timeout)


@dev.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_stack_options
def status(*, config: devstack.StackConfig, as_json: bool) -> None:
    """Show both services: state, address, pid, version, memory, log file.

    Exits with status 1 when a service is not answering.
    """
    services = devstack.status(config)
    if as_json:
        payload = {"dev_dir": str(config.dev_dir), "services": [s.as_json() for s in services]}
        click.echo(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(f"dev dir: {config.dev_dir}")
        for s in services:
            rss = f"{s.rss_bytes / 2**20:.0f} MiB" if s.rss_bytes else "-"
            click.echo(
                f"{s.name:<6} {s.state:<9} {s.address:<16} pid {s.pid or '-':<8} "
                f"version {s.version or '-':<8} rss {rss:<8} {s.detail}".rstrip()
            )
            if s.log_file:
                click.echo(f"{'':<6} log {s.log_file}")
    if any(s.state == "stopped" or s.detail.startswith("not answering") for s in services):
        raise SystemExit(1)


@dev.command()
@click.argument("service", required=False, type=click.Choice(_SERVICES))
@click.option(
    "-n",
    "--lines",
    type=int,
    default=50,
    show_default=True,
    help="How many trailing lines to show.",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
@_stack_options
def logs(*, config: devstack.StackConfig, service: str | None, lines: int, follow: bool) -> None:
    """Show the last lines of the Kafka and/or Redis log."""
    names = [service] if service else list(_SERVICES)
    files = {name: config.log_file(name) for name in names}
    prefix = len(names) > 1
    for name, path in files.items():
        if not path.is_file():
            click.echo(f"{name}: no log yet at {path}", err=True)
            continue
        for line in processes.tail_lines(path, lines):
            click.echo(f"{name} | {line}" if prefix else line)
    if follow:
        _follow(files, prefix=prefix)


def _follow(files: dict[str, Path], *, prefix: bool) -> None:
    positions = {name: path.stat().st_size if path.is_file() else 0 for name, path in files.items()}
    try:
        while True:
            for name, path in files.items():
                if not path.is_file():
                    continue
                size = path.stat().st_size
                if size < positions[name]:  # rolled over
                    positions[name] = 0
                if size == positions[name]:
                    continue
                with path.open("rb") as handle:
                    handle.seek(positions[name])
                    chunk = handle.read()
                    # Only print whole lines; keep a partial last line for the next round.
                    complete = chunk[: chunk.rfind(b"\n") + 1]
                    positions[name] += len(complete)
                for line in complete.decode(errors="replace").splitlines():
                    click.echo(f"{name} | {line}" if prefix else line)
            time.sleep(0.25)
    except KeyboardInterrupt:
        return
