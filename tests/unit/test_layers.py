"""The architecture as a failing test: which part of freshet may import which, and no cycles.

Read from the source with ``ast`` (nothing is imported): every ``import freshet…`` and
``from freshet… import`` of every module under ``flows/`` (the ``freshet`` package),
``sinks/`` (``freshet.sinks``) and ``serving/`` (``freshet.serving``), at module level or inside
a function. ``serving -> sinks <- the flow packages``: the stores know nothing of the flow, the
endpoint knows the definitions and the stores, never the flow's machinery.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"flows": "freshet", "sinks": "freshet.sinks", "serving": "freshet.serving"}

# part -> the parts it may import (besides itself). A part is freshet.<part>; "freshet" is the
# package's own __init__ (the public surface, which re-exports lazily).
ALLOWED: dict[str, set[str]] = {
    "sinks": set(),
    "dsl": {"sinks"},
    "engine": {"dsl", "sinks"},
    "decode": {"dsl", "sinks"},
    "stream": {"dsl", "engine", "decode", "sinks"},
    "backfill": {"dsl", "engine", "decode", "stream", "ops", "sinks"},
    "offline": {"dsl", "sinks", "stream"},
    "ops": {"dsl", "decode", "stream", "sinks"},
    "serving": {"dsl", "sinks"},
    "cli": {"dsl", "engine", "decode", "stream", "backfill", "offline", "ops", "sinks"},
    "freshet": {"dsl", "sinks", "serving", "offline"},
}
# Single modules a part may import beyond ALLOWED, each for a stated reason.
ALLOWED_MODULES: dict[str, dict[str, str]] = {
    "serving": {
        # POST /v1/ingest produces with the one Kafka client factory (which imports no other
        # freshet module), and refuses what the flow would dead-letter by the decoder's rules.
        "freshet.stream.kafka_clients": "ingest: the Kafka client factory",
        "freshet.decode.decoder": "ingest: validate events as the flow's decoder does",
        "freshet.decode.messages": "ingest: the decoder's input record (RawMessage)",
        "freshet.offline.stats": "the console (/ui): history and statistics of the offline log",
    },
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    base = FOLDERS[rel.parts[0]]
    parts = [*base.split("."), *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and not parts[1].startswith("_") else "freshet"


def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for folder in FOLDERS
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def imports(path: Path, *, top_level_only: bool) -> Iterator[str]:
    """The freshet modules ``path`` imports (``from freshet.x import y`` counts as
    ``freshet.x.y`` when that is a module, else ``freshet.x``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    known = modules()
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("freshet"):
                    yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("freshet"):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield sub if sub in known else node.module


def test_each_part_imports_only_what_the_architecture_allows() -> None:
    wrong = []
    for module, path in modules().items():
        mine = part_of(module)
        for target in imports(path, top_level_only=False):
            theirs = part_of(target)
            if (
                theirs != mine
                and theirs not in ALLOWED[mine]
                and target not in ALLOWED_MODULES.get(mine, {})
            ):
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(set(wrong)))


def test_no_module_level_import_cycles() -> None:
    graph = {
        module: set(imports(path, top_level_only=True)) & set(modules())
        for module, path in modules().items()
    }
    # A package's __init__ is imported by each of its modules; its own imports count for it.
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_layering_test_sees_the_code() -> None:
    found = modules()
    assert "freshet.stream.pipeline" in found
    assert "freshet.sinks.redis_store" in found
    assert "freshet.serving.app" in found
    assert "freshet.sinks.rows" in set(
        imports(found["freshet.engine.view_engine"], top_level_only=True)
    )
