"""The ``freshet`` command line.

Each command lives in its own module and is imported only when it runs, so ``freshet --help``
and quick commands stay fast and a command's heavy dependencies (Bytewax, Starlette, DuckDB)
load only for the commands that need them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import click

__all__ = ["main"]

# command name -> "module:attribute" of a click command or group.
_COMMANDS: dict[str, str] = {
    "dev": "flows.cli.dev:dev",
    "views": "flows.cli.views:views",
    "demo": "flows.cli.demo:demo",
    "run": "flows.cli.run:run",
    "backfill": "flows.cli.backfill:backfill",
    "serve": "serving.cli:serve",
    "get": "serving.cli:get",
    "historical": "flows.cli.historical:historical",
    "verify": "flows.cli.verify:verify",
    "reconcile": "flows.cli.verify:reconcile",
    "doctor": "flows.cli.doctor:doctor",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in _COMMANDS if self._available(name))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not built yet in this version
                return None
            raise
        command: click.Command = getattr(module, attr)
        return command

    @staticmethod
    def _available(name: str) -> bool:
        module_name = _COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module_name) is not None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="freshet")
def cli() -> None:
    """freshet: streaming features from Kafka, served fresh from Redis, logged to Parquet.

    Settings come from the environment: FRESHET_KAFKA_BOOTSTRAP (default 127.0.0.1:9092),
    FRESHET_REDIS_URL (default redis://127.0.0.1:6379/0), FRESHET_OFFLINE_DIR (default
    ./data/offline), FRESHET_API_KEYS (unset: no auth), FRESHET_SCHEMA_REGISTRY_URL (unset:
    Avro without the Confluent wire format).
    """


def main(argv: list[str] | None = None) -> Any:
    # Views come from FRESHET_VIEWS modules, loaded by whichever command needs them: a bad
    # module or an unknown view is the user's input, so it gets a message, not a traceback.
    from flows.registry import RegistryError, UnknownViewError

    try:
        return cli.main(args=argv, prog_name="freshet")
    except (RegistryError, UnknownViewError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
