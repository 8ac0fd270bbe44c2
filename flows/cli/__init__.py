"""The ``freshet`` command line.

Each command lives in its own module and is imported only when it runs, so ``freshet --help``
and quick commands stay fast and a command's heavy dependencies (Bytewax, Starlette, DuckDB)
load only for the commands that need them.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from typing import Any

import click

__all__ = ["EXIT_UNREACHABLE", "main"]

# Exit status when Kafka or Redis does not answer (1: other errors, 2: usage and definitions).
EXIT_UNREACHABLE = 3
_DEBUG_ENV = "FRESHET_DEBUG"

# command name -> "module:attribute" of a click command or group.
_COMMANDS: dict[str, str] = {
    "dev": "freshet.cli.dev:dev",
    "views": "freshet.cli.views:views",
    "demo": "freshet.cli.demo:demo",
    "run": "freshet.cli.run:run",
    "backfill": "freshet.cli.backfill:backfill",
    "serve": "freshet.serving.cli:serve",
    "get": "freshet.serving.cli:get",
    "historical": "freshet.cli.historical:historical",
    "stats": "freshet.cli.stats:stats",
    "verify": "freshet.cli.verify:verify",
    "reconcile": "freshet.cli.verify:reconcile",
    "doctor": "freshet.cli.doctor:doctor",
    "topics": "freshet.cli.topics:topics",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attr)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--debug",
    is_flag=True,
    envvar=_DEBUG_ENV,
    help=f"Print the traceback of an error (also {_DEBUG_ENV}=1; child processes inherit it).",
)
@click.version_option(package_name="freshet")
def cli(debug: bool) -> None:
    """freshet: streaming features from Kafka, served fresh from Redis, logged to Parquet.

    \b
    Your own views: write them in a module and name it in FRESHET_VIEWS, then
      FRESHET_VIEWS=my_views freshet topics create my_view
      FRESHET_VIEWS=my_views freshet run my_view
      FRESHET_VIEWS=my_views freshet serve

    \b
    Environment (read when a command starts; unset: the default in brackets):
      FRESHET_VIEWS                modules holding your views: dotted names
                                   importable from the current directory
                                   (my_views) or .py paths, comma-separated
                                   [the demo views card_txn, card_txn_json;
                                   both: freshet.dsl.views,my_views]
      FRESHET_KAFKA_BOOTSTRAP      Kafka brokers [127.0.0.1:9092]
      FRESHET_KAFKA_CONFIG_<KEY>   any librdkafka setting (_ becomes .), e.g.
                                   FRESHET_KAFKA_CONFIG_SECURITY_PROTOCOL=SSL
      FRESHET_KAFKA_TIMEOUT        seconds to wait for Kafka at start [10]
      FRESHET_REDIS_URL            Redis [redis://127.0.0.1:6379/0]; rediss://
                                   for TLS, ?cluster=true for Redis Cluster
      FRESHET_OFFLINE_DIR          the Parquet feature log [./data/offline]
      FRESHET_SCHEMA_REGISTRY_URL  schema registry of Avro views [none]
      FRESHET_API_KEYS             serve's keys, key:view_a,view_b=rw;key2:*
                                   (=w/=rw: may ingest) [no auth]
      FRESHET_STALE_GRACE_MS       how long past valid_until (+ the view's
                                   lateness) a windowed value is still
                                   "present", not "stale" [5000]
      FRESHET_CACHE                on: serve caches hot entities [off]
      FRESHET_CACHE_MAX_ENTRIES    its bound in entries [100000]
      FRESHET_CACHE_MAX_BYTES      its bound in bytes [64 MiB]
      FRESHET_CACHE_MAX_STALENESS_MS  its staleness bound [100]
      FRESHET_UI                   off: serve has no web console at /ui [on]
      FRESHET_UI_FLOW_METRICS      the flows' /metrics the console's health page
                                   reads, host:port,... [none]
      FRESHET_PROMETHEUS_URL       a Prometheus it asks instead [none]
      FRESHET_DEBUG                1: print tracebacks, as --debug
      FRESHET_DEV_DIR              data dir of `freshet dev` [<repo>/.freshet]
      FRESHET_DEV_KAFKA_PORT       its Kafka port [9092]
      FRESHET_DEV_CONTROLLER_PORT  its KRaft controller port [Kafka's + 1]
      FRESHET_DEV_REDIS_PORT       its Redis port [6379]
      FRESHET_FAULT                fault injection of freshet's own tests

    An error prints one line and exits non-zero (3: Kafka or Redis unreachable); an unexpected
    one also saves its traceback to a file the line names, or prints it with --debug.
    """
    if debug:
        os.environ[_DEBUG_ENV] = "1"  # run -p, backfill workers and the demo's flow too


def main(argv: list[str] | None = None) -> Any:
    """The console script: click's own errors as click prints them, every other error as one
    line (see :func:`_report`)."""
    # Views come from FRESHET_VIEWS modules, loaded by whichever command needs them: a bad
    # module or an unknown view is the user's input, so it gets a message, not a traceback.
    from freshet.dsl.registry import RegistryError, UnknownViewError

    args = _debug_first(list(sys.argv[1:] if argv is None else argv))
    if args[:1] != ["--debug"] and os.environ.get(_DEBUG_ENV, "").lower() not in _DEBUG_ENV_VALUES:
        # An error inside a dataflow also makes Bytewax's Rust side print a panic; its
        # backtrace (40 lines of Rust frames) tells a freshet user nothing: --debug keeps it.
        os.environ["RUST_BACKTRACE"] = "0"
    try:
        return cli.main(args=args, prog_name="freshet")
    except (RegistryError, UnknownViewError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        # Ctrl-C before a command installed its own handling (freshet.stream.shutdown): no
        # traceback.
        sys.exit(130)
    except Exception as exc:
        sys.exit(_report(exc))


_DEBUG_ENV_VALUES = ("1", "true", "yes", "on")
# Errors whose message already says what is wrong and what to do: (module, class, exit code).
# Looked up in sys.modules, so checking for them imports nothing (an error of a module that
# was never imported cannot have been raised).
_KNOWN: tuple[tuple[str, str, int], ...] = (
    ("freshet.stream.kafka_clients", "KafkaUnreachable", EXIT_UNREACHABLE),
    ("freshet.decode.schema_registry", "SchemaRegistryUnavailable", EXIT_UNREACHABLE),
    ("freshet.stream.connectors", "SourceError", 1),
    ("freshet.stream.deadletter", "DeadLetterError", 1),
    ("freshet.ops.devstack", "DevStackError", 1),
    ("freshet.dsl.definitions", "DefinitionError", 2),
    ("freshet.decode.decoder", "DecodeConfigError", 2),
    ("freshet.decode.schema_registry", "SchemaRegistryError", 2),
    ("freshet.sinks.settings", "SettingsError", 2),
    ("freshet.stream.runtime", "RecoveryDirError", 2),
    ("freshet.stream.kafka_clients", "TopicError", 1),
)


def _debug_first(args: list[str]) -> list[str]:
    """``--debug`` anywhere before ``--`` (``freshet run card_txn --debug``) moved to the front,
    where the group's option is."""
    end = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:end]:
        return args
    return ["--debug", *(a for a in args[:end] if a != "--debug"), *args[end:]]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes, outermost first (Bytewax wraps an error raised in a dataflow
    in ``BytewaxRuntimeError``s, the original at the end of the chain)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _known(exc: BaseException) -> tuple[str, int] | None:
    """(one line, exit code) for an error freshet expects, anywhere in ``exc``'s chain."""
    for error in _chain(exc):
        for module_name, class_name, code in _KNOWN:
            cls = getattr(sys.modules.get(module_name), class_name, None)
            if isinstance(cls, type) and isinstance(error, cls):
                return str(error), code
        redis_errors = sys.modules.get("redis.exceptions")
        if redis_errors is not None and isinstance(
            error, (redis_errors.ConnectionError, redis_errors.TimeoutError)
        ):
            return (
                f"cannot reach Redis at {_redis_url()} (FRESHET_REDIS_URL): "
                f"{str(error).rstrip('.')}; run "
                "`freshet doctor` to check the setup",
                EXIT_UNREACHABLE,
            )
        if isinstance(error, PermissionError):  # e.g. the offline dir: the message names it
            return f"{type(error).__name__}: {error}", 1
    return None


def _redis_url() -> str:
    from urllib.parse import urlsplit, urlunsplit

    url = os.environ.get("FRESHET_REDIS_URL", "redis://127.0.0.1:6379/0")
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    return urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))


def _report(exc: Exception) -> int:
    """Print ``exc`` as one line (after its traceback with ``--debug``); returns the exit code.

    Without ``--debug`` the traceback of an unexpected error goes to a file the line names.
    """
    debug = os.environ.get(_DEBUG_ENV, "").lower() in _DEBUG_ENV_VALUES
    if debug:
        traceback.print_exception(exc)
    known = _known(exc)
    if known is not None:
        message, code = known
        click.echo(f"Error: {message}", err=True)
        return code
    *_, root = _chain(exc)
    where = "the traceback is above" if debug else _save_traceback(exc)
    click.echo(f"Error: unexpected error: {type(root).__name__}: {root}; {where}", err=True)
    return 1


def _save_traceback(exc: BaseException) -> str:
    path = os.path.join(
        tempfile.gettempdir(), f"freshet-error-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.txt"
    )
    try:
        with open(path, "w") as out:
            traceback.print_exception(exc, file=out)
    except OSError:
        return "run with --debug for the traceback"
    return f"traceback in {path} (or run with --debug)"
