"""``freshet topics create VIEW…``: create the Kafka topics a view reads and dead-letters to.

Through the same clients as every command (:mod:`freshet.stream.kafka_clients`): the broker is
checked first (:func:`~freshet.stream.kafka_clients.preflight`, exit 3 when it does not
answer), then the missing topics are created with one admin request. A topic that exists is
reported with its partition count and left alone, so the command can be run again safely.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click

from freshet.dsl.definitions import FeatureView
from freshet.dsl.registry import UnknownViewError, get_view
from freshet.stream.deadletter import dead_letter_topic

__all__ = ["TopicPlan", "create_topics", "plan_topics", "topics"]

# The demo's topic has 3 partitions too: up to 3 workers share it (`freshet run -p 3`).
DEFAULT_PARTITIONS = 3
# A view's dead letters are few; `freshet run` creates a missing dead-letter topic with 1.
DEAD_LETTER_PARTITIONS = 1
_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class TopicPlan:
    """One topic to have: its name, partitions if created, and what it is for."""

    name: str
    partitions: int
    role: str  # e.g. "source of my_txn"


def plan_topics(views: Sequence[FeatureView], *, partitions: int) -> list[TopicPlan]:
    """The source and dead-letter topic of each view, each topic once (views may share one)."""
    plans: dict[str, TopicPlan] = {}
    for view in views:
        source = view.source.topic
        plans.setdefault(source, TopicPlan(source, partitions, f"source of {view.name}"))
        dlq = dead_letter_topic(view)
        plans.setdefault(
            dlq, TopicPlan(dlq, DEAD_LETTER_PARTITIONS, f"dead-letter topic of {view.name}")
        )
    return list(plans.values())


def create_topics(
    config: Mapping[str, Any],
    plans: Sequence[TopicPlan],
    *,
    replication_factor: int = -1,
    timeout_s: float,
) -> list[tuple[TopicPlan, str, int]]:
    """Create the missing topics of ``plans``: ``(plan, "created" | "exists", partitions)``
    per plan. Raises ``KafkaUnreachable`` when the broker does not answer and
    ``click.ClickException`` naming a topic that could not be created."""
    from freshet.stream import kafka_clients

    try:
        outcome = kafka_clients.ensure_topics(
            config,
            {p.name: p.partitions for p in plans},
            timeout_s=timeout_s,
            replication_factor=replication_factor,
        )
    except kafka_clients.TopicError as exc:
        roles = ", ".join(f"{p.name}: {p.role}" for p in plans)
        raise click.ClickException(f"{exc} ({roles})") from exc
    return [(p, *outcome[p.name]) for p in plans]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def topics() -> None:
    """Kafka topics of your views."""


@topics.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("view_names", metavar="VIEW [VIEW…]", nargs=-1, required=True)
@click.option(
    "--partitions",
    type=click.IntRange(1),
    default=DEFAULT_PARTITIONS,
    show_default=True,
    help="Partitions of each new source topic: at most this many workers read it.",
)
@click.option(
    "--replication-factor",
    type=click.IntRange(-1),
    default=-1,
    show_default=True,
    help="Replicas of each new topic (-1: the broker's default.replication.factor).",
)
def create(view_names: tuple[str, ...], partitions: int, replication_factor: int) -> None:
    """Create VIEW's source topic and its dead-letter topic, if missing.

    VIEW is a registered view (NAME or NAME@VERSION; see `freshet views`). Your views come from
    the modules in FRESHET_VIEWS, e.g.

        FRESHET_VIEWS=my_views freshet topics create my_txn --partitions 6

    The source topic gets --partitions partitions, the dead-letter topic (the view's
    dead_letter_topic, else <topic>.dlq) one. Topics that exist are reported and left as
    they are (Kafka cannot remove partitions, and adding some moves keys). Connects to
    FRESHET_KAFKA_BOOTSTRAP with FRESHET_KAFKA_CONFIG_* (security settings) and waits
    FRESHET_KAFKA_TIMEOUT seconds for the broker.
    """
    from freshet.sinks.settings import Settings

    try:
        views = [get_view(name) for name in view_names]
    except UnknownViewError as exc:
        raise click.BadParameter(str(exc), param_hint="VIEW") from None
    settings = Settings.from_env()
    plans = plan_topics(views, partitions=partitions)
    results = create_topics(
        settings.kafka_client_config(),
        plans,
        replication_factor=replication_factor,
        timeout_s=settings.kafka_timeout_s,
    )
    width = max(len(plan.name) for plan in plans)
    for plan, what, count in results:
        mark = click.style(f"{what:>7}", fg="green" if what == "created" else None, bold=True)
        noun = "partition" if count == 1 else "partitions"
        click.echo(f"{mark}  {plan.name:<{width}}  {count} {noun}, {plan.role}")
