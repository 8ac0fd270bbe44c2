"""``freshet doctor [VIEW…]``: check Kafka, topics, Redis and the offline dir; say what to fix.

Exit status: 0 when nothing is wrong (warnings included), 1 when a check failed, or with
``--strict`` when one warned. See :mod:`freshet.ops.doctor` for the checks and why each matters.
"""

from __future__ import annotations

import click
import orjson

from freshet.cli._views import resolve_views
from freshet.ops.doctor import (
    Finding,
    Level,
    diagnose,
    probe_c_extensions,
    probe_kafka,
    probe_redis,
    probe_schema_registry,
)
from freshet.sinks.settings import Settings

__all__ = ["doctor"]

_MARKS = {Level.OK: ("ok", "green"), Level.WARN: ("warn", "yellow"), Level.ERROR: ("FAIL", "red")}


def _print(findings: list[Finding]) -> None:
    for finding in findings:
        word, colour = _MARKS[finding.level]
        click.echo(f"{click.style(f'{word:>4}', fg=colour, bold=True)}  {finding.check}: "
                   f"{finding.message}")  # fmt: skip
        if finding.fix:
            click.echo(f"      fix: {finding.fix}")
    errors = sum(f.level is Level.ERROR for f in findings)
    warnings = sum(f.level is Level.WARN for f in findings)
    click.echo(f"\n{errors} error(s), {warnings} warning(s), {len(findings)} check(s)")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("view_names", metavar="[VIEW]...", nargs=-1)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="Total workers you plan (processes x -w): checks the partitions split evenly.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for Kafka and for Redis.",
)
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor(
    view_names: tuple[str, ...], workers: int | None, timeout: float, strict: bool, as_json: bool
) -> None:
    """Check that this deployment can run VIEW (default: every view in use, i.e. those of
    the FRESHET_VIEWS modules, or the demo views when it is unset).

    A missing topic comes with its fix: `freshet topics create VIEW`.

    Kafka (reachable, source and dead-letter topics, partitions), Redis (reachable, cluster
    mode matching the URL, version, maxmemory-policy that could evict feature keys, memory
    left), the schema registry when FRESHET_SCHEMA_REGISTRY_URL is set (reachable) and
    FRESHET_OFFLINE_DIR (writable, free space). Reads the same settings as `freshet run`:
    FRESHET_KAFKA_BOOTSTRAP, FRESHET_KAFKA_CONFIG_*, FRESHET_REDIS_URL,
    FRESHET_SCHEMA_REGISTRY_URL, FRESHET_OFFLINE_DIR.
    """
    views = resolve_views(view_names, default_all=True)
    settings = Settings.from_env()
    kafka = probe_kafka(settings.kafka_client_config(), timeout_s=timeout)
    redis_facts = probe_redis(settings.redis_url, timeout_s=timeout)
    registry = (
        probe_schema_registry(settings.schema_registry_url, timeout_s=timeout)
        if settings.schema_registry_url
        else None
    )
    findings = diagnose(
        kafka,
        redis_facts,
        views,
        settings.offline_dir,
        workers=workers,
        registry=registry,
        missing_extensions=probe_c_extensions(),
    )
    if as_json:
        click.echo(orjson.dumps([f.to_json() for f in findings], option=orjson.OPT_INDENT_2))
    else:
        _print(findings)
    failing = {Level.ERROR, Level.WARN} if strict else {Level.ERROR}
    if any(f.level in failing for f in findings):
        raise SystemExit(1)
