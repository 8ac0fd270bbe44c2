"""freshet works installed, not only from a checkout.

The wheel is built (with both C extensions) from a copy of the source tree, installed with its
dependencies into a fresh virtualenv, and used from a temporary directory outside the checkout,
with only that virtualenv's ``bin`` on PATH (besides the system's java, mvn and redis-server):
the public names import, the checkout's folder names do not, and a user's own view module
(``FRESHET_VIEWS``, a dotted name importable from the working directory) goes through the whole
command line on a dev stack of its own, on non-default ports: ``views``, ``dev up``,
``topics create``, ``run --stop-at-end``, ``get`` and ``dev down``.

The build copies the tree first because pip builds in place: it would leave ``build/`` and a
rewritten ``freshet.egg-info`` in the checkout, shared by every session that builds at once.
The new stack reuses the session stack's Kafka jars (symlinked), so nothing is downloaded twice.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Producer
from redis_servers import free_port

from freshet.ops import devstack

_REPO = Path(__file__).resolve().parents[2]
# What a build does not need: at the top, environments, the dev stack and build output; anywhere,
# VCS data, caches and compiled files.
_NOT_SOURCE_TOP = {".venv", "venv", ".freshet", "build", "dist", "data"}
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", "*.so", "*.pyc", ".pytest_cache", ".mypy_cache",
    ".ruff_cache", ".hypothesis",
)  # fmt: skip
_BUILD_TIMEOUT_S = 300
_INSTALL_TIMEOUT_S = 600
_COMMAND_TIMEOUT_S = 180

_PACKAGE_DATA = (
    "freshet/schemas/*.avsc",
    "freshet/ops/stack/pom.xml",
    "freshet/ops/stack/log4j2.yaml",
    "freshet/ops/stack/server.properties.template",
    "freshet/serving/console_static/page.html",
    "freshet/serving/console_static/console.js",
    "freshet/serving/console_static/console.css",
)
_EXTENSIONS = ("freshet/decode/_fastdecode*.so", "freshet/engine/_faststate*.so")

_SCHEMA = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "customer_id", "type": "string"},
        {"name": "total", "type": "double"},
        {"name": "store", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
_VIEWS_MODULE = '''\
"""A user's views, outside any freshet checkout."""

from pathlib import Path

from freshet import Aggregation, Entity, Feature, FeatureView, Source

ORDERS = FeatureView(
    name="orders",
    version=1,
    entity=Entity(name="customer", key="customer_id"),
    source=Source(
        topic="shop.orders",
        encoding="json",
        schema=Path(__file__).with_name("orders.avsc"),
        event_time_field="ts",
    ),
    features=(
        Feature("order_count", Aggregation.COUNT),
        Feature("spend_total", Aggregation.SUM, "total"),
        Feature("spend_max_24h", Aggregation.MAX, "total", window="24h"),
        Feature("store_last", Aggregation.LAST, "store"),
    ),
)
'''


@dataclass(frozen=True)
class Installed:
    """A fresh virtualenv with the wheel installed, and how long it took."""

    venv: Path
    wheel: Path
    build_s: float
    install_s: float

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the wheel from a copy of the checkout and install it into a new virtualenv."""
    root = tmp_path_factory.mktemp("wheel")
    source, wheels, venv = root / "src", root / "dist", root / "venv"
    started = time.monotonic()
    shutil.copytree(_REPO, source, ignore=_ignore, symlinks=True)
    _check_call(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-w", str(wheels), str(source)],
        what="pip wheel", timeout=_BUILD_TIMEOUT_S, cwd=root,
    )  # fmt: skip
    build_s = time.monotonic() - started
    (wheel,) = wheels.glob("freshet-*.whl")
    started = time.monotonic()
    # The repository venv's interpreter creates it, so it runs the Python the project runs.
    _check_call([sys.executable, "-m", "venv", str(venv)], what="venv", cwd=root)
    _check_call(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
         "--quiet", str(wheel)],
        what="pip install", timeout=_INSTALL_TIMEOUT_S, cwd=root,
    )  # fmt: skip
    install_s = time.monotonic() - started
    print(f"\nwheel built in {build_s:.1f} s; fresh venv + install took {install_s:.1f} s")
    return Installed(venv=venv, wheel=wheel, build_s=build_s, install_s=install_s)


def test_the_wheel_holds_only_the_freshet_package_with_its_extensions_and_data(
    installed: Installed,
) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = wheel.read(entry_points).decode()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"freshet"}
    assert len(tops) == 2, sorted(tops)
    for pattern in (*_EXTENSIONS, *_PACKAGE_DATA):
        assert fnmatch.filter(names, pattern), f"{pattern} is not in {installed.wheel.name}"
    assert "freshet = freshet.cli:main" in scripts


def test_the_installed_package_imports_from_outside_the_checkout(
    installed: Installed, tmp_path: Path
) -> None:
    probe = """\
import importlib, json
import freshet
from freshet import Aggregation, Client, Entity, Feature, FeatureView, Source
import freshet.decode._fastdecode, freshet.engine._faststate
importable = []
for name in ("flows", "sinks", "serving", "schemas"):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        continue
    importable.append(name)
print(json.dumps({"file": freshet.__file__, "importable": importable}))
"""
    assert _REPO not in tmp_path.resolve().parents, "run it outside the checkout"
    result = _User(installed, cwd=tmp_path, env={}).run("python", "-c", probe)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    site_packages = installed.venv.resolve() / "lib"
    assert site_packages in Path(found["file"]).resolve().parents, found["file"]
    assert found["importable"] == [], "the checkout's folders must not be top-level modules"


def test_the_installed_command_runs_a_users_view_on_its_own_stack(
    installed: Installed, dev_stack: devstack.StackConfig, tmp_path: Path
) -> None:
    started = time.monotonic()
    work = tmp_path / "project"
    assert _REPO not in work.resolve().parents, "run it outside the checkout"
    (work / "shop").mkdir(parents=True)
    (work / "shop" / "__init__.py").write_text("")
    (work / "shop" / "orders.avsc").write_text(json.dumps(_SCHEMA))
    (work / "shop" / "features.py").write_text(_VIEWS_MODULE)
    dev_dir = tmp_path / "dev"
    _share_jars(dev_stack.lib_dir, dev_dir / "kafka" / "lib")
    kafka_port, controller_port, redis_port = _free_ports(3)
    user = _User(
        installed,
        cwd=work,
        env={
            "FRESHET_VIEWS": "shop.features",
            "FRESHET_DEV_DIR": str(dev_dir),
            "FRESHET_DEV_KAFKA_PORT": str(kafka_port),
            "FRESHET_DEV_CONTROLLER_PORT": str(controller_port),
            "FRESHET_DEV_REDIS_PORT": str(redis_port),
            "FRESHET_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}",
            "FRESHET_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "FRESHET_OFFLINE_DIR": str(work / "data" / "offline"),
        },
    )

    listed = json.loads(user.freshet("views", "--json").stdout)
    assert [view["name"] for view in listed] == ["orders"]

    with _own_stack(user, dev_dir, (kafka_port, controller_port, redis_port)):
        user.freshet("topics", "create", "orders", "--partitions", "2")
        expected = _produce_orders(f"127.0.0.1:{kafka_port}", "shop.orders")
        user.freshet("run", "orders", "--stop-at-end", "--metrics-port", "0")
        for customer, features in expected.items():
            lookup = json.loads(user.freshet("get", "orders", customer, "--json").stdout)
            assert lookup["found"], lookup
            assert lookup["features"] == features, customer
            assert set(lookup["status"].values()) == {"present"}, lookup
    print(f"\ninstalled freshet, own stack, end to end: {time.monotonic() - started:.1f} s")


# --- helpers -------------------------------------------------------------------------------


def _ignore(directory: str, names: list[str]) -> set[str]:
    ignored = set(_NOT_SOURCE(directory, names))
    if Path(directory) == _REPO:
        ignored |= _NOT_SOURCE_TOP & set(names)
    return ignored


def _check_call(
    command: list[str], *, what: str, cwd: Path, timeout: float = _COMMAND_TIMEOUT_S
) -> None:
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{what} failed:\n{(result.stdout + result.stderr)[-3000:]}"


def _clean_env(installed: Installed, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a user of the installed package: its venv first on PATH, no other
    virtualenv, no PYTHONPATH, no FRESHET_* setting but ``extra``."""
    others = [
        entry
        for entry in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if entry and not (Path(entry).parent / "pyvenv.cfg").exists()
    ]
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "JAVA_HOME", "PIP_CACHE_DIR")
    return {
        **{k: os.environ[k] for k in keep if k in os.environ},
        "PATH": os.pathsep.join([str(installed.bin), *others]),
        "VIRTUAL_ENV": str(installed.venv),
        **extra,
    }


class _User:
    """Runs the installed venv's programs in ``cwd`` with :func:`_clean_env` plus ``env``."""

    def __init__(self, installed: Installed, *, cwd: Path, env: Mapping[str, str]) -> None:
        self.installed = installed
        self.cwd = cwd
        self.env = _clean_env(installed, env)

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        program = shutil.which(command[0], path=self.env["PATH"])
        assert program is not None, f"{command[0]} is not on PATH"
        assert Path(program).parent == self.installed.bin, program
        return subprocess.run(
            [program, *command[1:]],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_S,
            check=False,
        )

    def freshet(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``freshet ARGS``, which must exit 0."""
        result = self.run("freshet", *args)
        assert result.returncode == 0, f"freshet {' '.join(args)}:\n{result.stderr[-3000:]}"
        return result


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _share_jars(shared: Path, lib_dir: Path) -> None:
    """Link the session stack's Kafka jars into ``lib_dir`` (with the pom stamp that says they
    are complete): ``freshet dev up`` then starts without Maven. A stack that finds them stale
    replaces the links only."""
    lib_dir.mkdir(parents=True)
    for jar in shared.glob("*.jar"):
        (lib_dir / jar.name).symlink_to(jar)
    stamp = shared / ".pom.sha256"
    if stamp.is_file():
        shutil.copyfile(stamp, lib_dir / ".pom.sha256")


def _produce_orders(bootstrap: str, topic: str) -> dict[str, dict[str, object]]:
    """Produce a few JSON orders per customer; returns each customer's expected features."""
    now_ms = int(time.time() * 1000)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    expected: dict[str, dict[str, object]] = {}
    for c, customer in enumerate(("cust-1", "cust-2", "cust-3")):
        orders = [
            {"customer_id": customer, "total": 10.25 * (i + 1) + c, "store": f"store-{(i + c) % 3}",
             "ts": now_ms - 60_000 + 1_000 * i}
            for i in range(4 + 3 * c)
        ]  # fmt: skip
        for order in orders:
            producer.produce(topic, key=customer.encode(), value=json.dumps(order).encode())
        totals = [order["total"] for order in orders]
        expected[customer] = {
            "order_count": len(orders),
            "spend_total": sum(totals),
            "spend_max_24h": max(totals),
            "store_last": orders[-1]["store"],
        }
    assert producer.flush(30) == 0, "the orders were not all delivered"
    return expected


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _processes_mentioning(text: str) -> dict[int, str]:
    """pid -> command line of every process whose command line contains ``text``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found[int(entry.name)] = cmdline
    return found


@contextlib.contextmanager
def _own_stack(user: _User, dev_dir: Path, ports: tuple[int, ...]) -> Iterator[None]:
    """``freshet dev up`` ... ``freshet dev down``, after which nothing of it may be running:
    no process naming the dev dir (Kafka's JVM), nothing on its ports (Redis renames itself)."""
    marker = str(dev_dir.resolve())
    try:
        user.freshet("dev", "up")
        assert _processes_mentioning(marker), f"no process of the stack names {marker}"
        yield
    finally:
        down = user.run("freshet", "dev", "down")
        leftovers = _processes_mentioning(marker)
        open_ports = [port for port in ports if _listening(port)]
        for service in ("kafka", "redis"):  # whatever `dev down` left behind
            _kill_if_ours(dev_dir / service / f"{service}.pid", marker, ports)
    assert down.returncode == 0, down.stderr[-3000:]
    assert leftovers == {}, leftovers
    assert open_ports == [], f"still listening after freshet dev down: {open_ports}"


def _kill_if_ours(pid_file: Path, marker: str, ports: tuple[int, ...]) -> None:
    """Kill the pid in ``pid_file`` if it is still this stack's Kafka (its command line names
    the dev dir) or Redis (``redis-server 127.0.0.1:PORT``), never a recycled pid."""
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError, IndexError):
        return
    if marker in cmdline or any(f"127.0.0.1:{port}" in cmdline for port in ports):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
