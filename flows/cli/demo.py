"""``freshet demo``: the whole product in one command, on the local stack.

Starts Kafka + Redis (``freshet.ops.devstack``, as ``freshet dev up``), creates the demo view's
topic, runs ``freshet run card_txn`` as a child process, produces a synthetic card stream
(``freshet.ops.generator``: Zipf cards, some late and some malformed records) at a steady rate,
and shows the busiest cards' features changing live in Redis, with the flow's counters from
its ``/metrics``. At the end it says how to query the values.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from freshet.ops.processes import free_port
from freshet.stream.metrics import DEFAULT_METRICS_PORT

if TYPE_CHECKING:
    from freshet.sinks.redis_store import RedisFeatureReader

__all__ = ["demo"]

_VIEW = "card_txn"
DEMO_VIEWS_MODULE = "freshet.dsl.views"
_FRESHET = [sys.executable, "-c", "import sys; from freshet.cli import main; sys.exit(main())"]
_FLOW_START_TIMEOUT_S = 60.0
_DRAIN_S = 3.0  # keep showing after the last record, while the flow catches up


def _scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _freshness_p50_ms(metrics: dict[str, float]) -> float | None:
    prefix = "freshet_freshness_seconds_bucket{"
    buckets = sorted(
        (float(k.split('le="')[1].split('"')[0]), v)
        for k, v in metrics.items()
        if k.startswith(prefix) and f'view="{_VIEW}"' in k and "+Inf" not in k
    )
    total = metrics.get(f'freshet_freshness_seconds_count{{view="{_VIEW}"}}', 0)
    for bound, count in buckets:
        if total and count >= total / 2:
            return bound * 1000
    return None


_FLOW_STOP_TIMEOUT_S = 45.0  # the flow's own drain bound (30 s) and its exit


def _stop_flow(flow: subprocess.Popen[bytes], console: Any) -> bool:
    """Stop the flow as a user would (SIGTERM: it drains and commits); True if it exited 0."""
    if flow.poll() is None:
        console.print("    stopping the flow (SIGTERM: it commits what it has read) …")
        flow.terminate()
    try:
        return flow.wait(timeout=_FLOW_STOP_TIMEOUT_S) == 0
    except subprocess.TimeoutExpired:
        flow.kill()
        flow.wait()
        return False


def _rows_emitted(log_path: Path, start: int) -> int | None:
    """The rows the flow says it emitted, from its last line (None if it did not say)."""
    from freshet.stream.runtime import rows_emitted_in

    with open(log_path, "rb") as log:
        log.seek(start)
        return rows_emitted_in(log.read().decode(errors="replace"))


# A feature's header is its name on lines of at most this many characters, broken after an
# underscore: with one space between columns, the demo's 8 columns (ids of 11 characters and
# values up to 10) fit a terminal of 80 columns with every id and every name whole.
_HEADER_WIDTH = 9


def _header(name: str, width: int = _HEADER_WIDTH) -> str:
    """``name`` broken after underscores into lines of at most ``width`` characters where it
    can (``amount_sum_1h`` -> ``amount_`` / ``sum_1h``); the lines joined give the name back."""
    lines: list[str] = []
    for part in name.replace("_", "_\0").split("\0"):
        if lines and len(lines[-1]) + len(part) <= width:
            lines[-1] += part
        else:
            lines.append(part)
    return "\n".join(lines)


def _table(
    reader: RedisFeatureReader, cards: list[str], metrics: dict[str, float], produced: int
) -> Any:
    """The live view: one row per card (its id never cut), one column per feature (its name
    whole, over several lines), the flow's counters below."""
    from rich.table import Table

    view = f'{{view="{_VIEW}"}}'
    dead = sum(v for k, v in metrics.items() if k.startswith("freshet_dead_letters_total"))
    p50 = _freshness_p50_ms(metrics)
    caption = (
        f"produced {produced:,} · read {metrics.get(f'freshet_events_in_total{view}', 0):,.0f}"
        f" · rows {metrics.get(f'freshet_rows_emitted_total{view}', 0):,.0f}"
        f" · late {metrics.get(f'freshet_events_late_total{view}', 0):,.0f}"
        f" · dead letters {dead:,.0f}"
        + (f" · freshness p50 ≤ {p50:.0f} ms" if p50 is not None else "")
    )
    lookups = reader.get_many(_VIEW, cards)
    names = list(reader.layout(_VIEW).feature_names)
    # No borders, one space between columns: the values get the width.
    table = Table(
        title=f"freshet demo · {_VIEW} · busiest cards, live from Redis",
        caption=caption,
        box=None,
        padding=(0, 1, 0, 0),
        pad_edge=False,
    )
    table.add_column("card", no_wrap=True, min_width=max(map(len, cards), default=4))
    table.add_column("age", justify="right", no_wrap=True)
    for name in names:
        table.add_column(_header(name), justify="right")
    for lookup in lookups:
        age_ms = lookup["age_ms"]
        if not lookup["found"] or age_ms is None:
            table.add_row(lookup["entity"], "—", *("" for _ in names))
            continue
        cells = []
        for name in names:
            value = lookup["features"][name]
            cells.append(f"{value:,.2f}" if isinstance(value, float) else str(value))
        table.add_row(lookup["entity"], f"{age_ms / 1000:.1f} s", *cells)
    return table


def _freshet_command(
    executable: str = sys.executable,
    *,
    cwd: Path | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> str:
    """How the user's shell runs this interpreter's ``freshet``: ``freshet`` when PATH finds
    that very script, else its path (relative when under ``cwd``, e.g. ``.venv/bin/freshet``)."""
    script = Path(executable).parent.resolve() / "freshet"
    on_path = which("freshet")
    if not script.is_file() or (on_path is not None and Path(on_path).resolve() == script):
        return "freshet"
    here = (cwd or Path.cwd()).resolve()
    return str(script.relative_to(here)) if script.is_relative_to(here) else str(script)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--rate",
    type=click.FloatRange(1, 100_000),
    default=500.0,
    show_default=True,
    help="Transactions per second.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(1, 3600),
    default=30.0,
    show_default=True,
    help="How long to produce.",
)
@click.option("--cards", type=click.IntRange(1), default=2_000, show_default=True)
@click.option("--merchants", type=click.IntRange(1), default=200, show_default=True)
@click.option("--late-fraction", type=click.FloatRange(0, 0.5), default=0.01, show_default=True)
@click.option("--bad-fraction", type=click.FloatRange(0, 0.5), default=0.005, show_default=True)
@click.option(
    "--show",
    type=click.IntRange(1, 50),
    default=8,
    show_default=True,
    help="How many of the busiest cards to show.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_METRICS_PORT,
    show_default=True,
    help="The flow's /metrics port (0: any free port).",
)
def demo(
    rate: float,
    seconds: float,
    cards: int,
    merchants: int,
    late_fraction: float,
    bad_fraction: float,
    show: int,
    metrics_port: int,
) -> None:
    """Run the demo end to end: stack, topic, flow, a synthetic stream, live features.

    Ctrl-C (or SIGTERM) ends it early the same way it ends on its own: the flow is stopped
    gracefully and the demo checks that every row it emitted is in the offline log.
    """
    from rich.console import Console
    from rich.live import Live

    from freshet.stream.shutdown import STOP, block_stop_signals

    STOP.install()

    import pyarrow.parquet as pq

    from freshet.dsl.views import CARD_TXN
    from freshet.ops import devstack
    from freshet.ops.generator import GeneratorConfig, ProduceCounts, TransactionStream, produce
    from freshet.sinks.parquet_log import segment_paths
    from freshet.sinks.redis_store import RedisFeatureReader, connect
    from freshet.sinks.settings import Settings
    from freshet.stream.kafka_clients import ensure_topics

    console = Console(stderr=True)
    stack = devstack.StackConfig.from_env(os.environ)
    console.print(f"[bold]1/4[/] starting Kafka + Redis in {stack.dev_dir} …")
    try:
        devstack.up(stack, echo=lambda m: console.print(f"    {m}"))
    except devstack.DevStackError as exc:
        raise click.ClickException(f"the local stack did not start: {exc}") from exc
    env = {
        "FRESHET_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "FRESHET_REDIS_URL": stack.redis_url,
        **{k: v for k, v in os.environ.items() if k.startswith("FRESHET_")},
        # The demo's own view, whatever views this shell's FRESHET_VIEWS names.
        "FRESHET_VIEWS": DEMO_VIEWS_MODULE,
    }
    settings = Settings.from_env(env)
    view = CARD_TXN
    ensure_topics(
        settings.kafka_client_config(), {view.source.topic: 3}, timeout_s=settings.kafka_timeout_s
    )

    port = metrics_port or free_port()
    console.print(f"[bold]2/4[/] starting the flow: freshet run {_VIEW} (metrics on :{port}) …")
    log_path = Path(settings.offline_dir).parent / "demo-flow.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_start = log_path.stat().st_size if log_path.exists() else 0
    segments_before = set(segment_paths(settings.offline_dir, _VIEW))
    with open(log_path, "ab") as log:
        flow = subprocess.Popen(
            [*_FRESHET, "run", _VIEW, "--from", "latest", "--metrics-port", str(port),
             "--snapshot-interval", "5"],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
            # Stopped by us only (once): a Ctrl-C in the terminal would reach it a second time.
            process_group=0, preexec_fn=block_stop_signals,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + _FLOW_START_TIMEOUT_S
        while not _scrape(port):
            if flow.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(f"the flow did not start; see {log_path}")
            time.sleep(0.2)
        time.sleep(1.0)  # partitions are assigned (at their end) just after metrics are up

        config = GeneratorConfig(
            cards=cards, merchants=merchants, late_fraction=late_fraction,
            bad_fraction=bad_fraction, seed=int(time.time()),
        )  # fmt: skip
        hot = TransactionStream(view, config).hot_cards(show)
        count = max(1, int(rate * seconds))
        console.print(
            f"[bold]3/4[/] producing {count:,} transactions to '{view.source.topic}' at "
            f"{rate:,.0f}/s over {cards:,} cards ({late_fraction:.1%} late, "
            f"{bad_fraction:.1%} malformed) …"
        )
        progress = {"produced": 0}
        result: dict[str, ProduceCounts | BaseException] = {}

        def run_producer() -> None:
            try:
                result["counts"] = produce(
                    settings.kafka_bootstrap, view.source.topic, view=view, count=count,
                    rate=rate, config=config, kafka_config=dict(settings.kafka_config),
                    on_progress=lambda c: progress.__setitem__("produced", c.total),
                )  # fmt: skip
            except BaseException as exc:  # reported below, in the main thread
                result["error"] = exc

        producer = threading.Thread(target=run_producer, name="demo-producer", daemon=True)
        producer.start()
        client = connect(settings.redis_url)
        reader = RedisFeatureReader(client, {_VIEW: view.layout()})
        drained_at: float | None = None
        with Live(console=console, refresh_per_second=4) as live:
            while not STOP.requested:
                if not producer.is_alive() and drained_at is None:
                    drained_at = time.monotonic()
                    counts = result.get("counts")
                    if isinstance(counts, ProduceCounts):
                        progress["produced"] = counts.total
                if drained_at is not None and time.monotonic() - drained_at > _DRAIN_S:
                    break
                if flow.poll() is not None:
                    raise click.ClickException(f"the flow stopped; see {log_path}")
                live.update(_table(reader, hot, _scrape(port), progress["produced"]))
                time.sleep(0.25)
        if not console.is_terminal:  # there, Live leaves its last frame without a newline
            console.line()
        client.close()
        if "error" in result and not STOP.requested:
            raise click.ClickException(f"producing failed: {result['error']}")
    finally:
        stopped = _stop_flow(flow, console)
    emitted = _rows_emitted(log_path, log_start)
    new_segments = set(segment_paths(settings.offline_dir, _VIEW)) - segments_before
    logged = sum(pq.read_metadata(path).num_rows for path in new_segments)
    if not stopped or emitted is None or emitted != logged:
        raise click.ClickException(
            f"the flow emitted {emitted if emitted is not None else 'an unknown number of'} "
            f"rows but {logged:,} are in the offline log; see {log_path}"
        )

    card = hot[0]
    body = json.dumps({"entities": hot[:3]})
    freshet = _freshet_command()
    activate = Path(freshet).parent / "activate"
    say = functools.partial(console.print, highlight=False)
    # Commands are not wrapped (soft_wrap): copied from any terminal width, they still run.
    commands = functools.partial(console.print, highlight=False, markup=False, soft_wrap=True)
    say(
        f"\n[bold]4/4[/] done (flow log: {log_path}). The flow stopped cleanly: all "
        f"{emitted:,} rows it emitted are in Redis and in the offline log under "
        f"{settings.offline_dir}/{_VIEW}/ (checked). The values stay in Redis "
        f"(TTL {view.ttl_seconds // 86_400} days)."
    )
    if freshet != "freshet" and activate.is_file():
        say(f"\n`freshet` is not on your PATH: run it as {freshet}, or activate its venv first:")
        commands(f"  source {activate}")
    say("\nQuery them:")
    commands(
        f"  {freshet} get {_VIEW} {card}\n"
        f"  {freshet} serve &\n"
        f"  curl -s http://127.0.0.1:8000/v1/features/{_VIEW}/{card}\n"
        f"  curl -s -X POST http://127.0.0.1:8000/v1/features/{_VIEW} "
        f"-H 'content-type: application/json' -d '{body}'"
    )
    say(
        "\nThe windowed values stopped moving when the flow stopped: they are the values as of "
        "the last event or window expiry it processed. To keep them fresh, run the flow again:"
    )
    commands(
        f"  {freshet} run {_VIEW}   (metrics: http://127.0.0.1:{DEFAULT_METRICS_PORT}/metrics)"
    )
