"""The local dev stack: a real single-node Apache Kafka and a real Redis on loopback, no Docker.

Kafka 4.x runs from jars fetched once from Maven Central (``deploy/local/pom.xml``) in KRaft
combined mode (broker and controller in one JVM); Redis is Debian's ``redis-server`` without
persistence. Everything they write (jars, data, logs, pid files) lives under one dev dir,
``<repo>/.freshet`` unless ``FRESHET_DEV_DIR`` says otherwise.

``up`` is idempotent: it reuses a service it started before (pid file + health check) or any
healthy Kafka/Redis already answering on the port ("external", never stopped by ``down``), and
refuses a port held by anything else. ``down`` stops only what ``up`` started, by pid.
``freshet dev`` (``flows/cli/dev.py``) and the integration-test fixtures both call this module.

Errors::

    DevStackError(RuntimeError)
     ├── MissingToolError     java, mvn or redis-server is not installed (says what to install)
     ├── PortTakenError       a port is held by something that is not a healthy Kafka/Redis
     └── ServiceStartError    a service exited or did not become healthy in time (log tail)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.resources
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from freshet.ops import processes

__all__ = [
    "DEFAULT_CONTROLLER_PORT",
    "DEFAULT_KAFKA_PORT",
    "DEFAULT_REDIS_PORT",
    "DevStackError",
    "MissingToolError",
    "PortTakenError",
    "ServiceStartError",
    "ServiceStatus",
    "StackConfig",
    "down",
    "ensure_jars",
    "kafka_cluster_id",
    "redis_server_info",
    "render_template",
    "status",
    "up",
]

# The stack's files: deploy/local in a checkout, shipped in the wheel as freshet.ops.stack.
DEPLOY_DIR = Path(str(importlib.resources.files("freshet.ops.stack")))

DEFAULT_KAFKA_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093
DEFAULT_REDIS_PORT = 6379
HOST = "127.0.0.1"

# How long services get to become healthy / to exit. A cold JVM on a busy 2-core box is slow.
KAFKA_START_TIMEOUT_S = 120.0
REDIS_START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 30.0

_INSTALL_HINTS = {
    "java": "install a Java 17+ runtime: apt-get install -y openjdk-17-jre-headless",
    "mvn": "install Maven (it fetches the Kafka jars once): apt-get install -y maven",
    "redis-server": "install Redis: apt-get install -y redis-server",
}

Echo = Callable[[str], None]


def _quiet(_message: str) -> None:
    """An ``echo`` that says nothing."""


class DevStackError(RuntimeError):
    """The dev stack could not be brought up, inspected or stopped."""


class MissingToolError(DevStackError):
    """A program the stack needs (java, mvn, redis-server) is not on PATH."""


class PortTakenError(DevStackError):
    """A port is held by something that is not a healthy Kafka broker / Redis server."""


class ServiceStartError(DevStackError):
    """A service exited during start-up or did not become healthy in time."""


@dataclass(frozen=True, kw_only=True)
class StackConfig:
    """Where the stack lives and which loopback ports it uses."""

    dev_dir: Path
    kafka_port: int = DEFAULT_KAFKA_PORT
    controller_port: int = DEFAULT_CONTROLLER_PORT
    redis_port: int = DEFAULT_REDIS_PORT
    kafka_heap_mb: int = 512
    deploy_dir: Path = DEPLOY_DIR
    # The jar cache; defaults to <dev_dir>/kafka/lib. Tests share one cache between dev dirs.
    lib_dir_override: Path | None = None

    def __post_init__(self) -> None:
        ports = {
            "kafka_port": self.kafka_port,
            "controller_port": self.controller_port,
            "redis_port": self.redis_port,
        }
        for name, port in ports.items():
            if not 1 <= port <= 65535:
                raise ValueError(f"{name} {port} is not a TCP port (1-65535)")
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"the stack's ports must differ, got {ports}")
        if self.kafka_heap_mb < 128:
            raise ValueError(f"kafka_heap_mb {self.kafka_heap_mb} is too small (>= 128)")

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        dev_dir: Path | None = None,
        kafka_port: int | None = None,
        controller_port: int | None = None,
        redis_port: int | None = None,
    ) -> StackConfig:
        """Read FRESHET_DEV_DIR / _KAFKA_PORT / _CONTROLLER_PORT / _REDIS_PORT; arguments win."""
        if dev_dir is None:
            raw_dir = env.get("FRESHET_DEV_DIR")
            dev_dir = Path(raw_dir) if raw_dir else default_dev_dir()
        if kafka_port is None:
            kafka_port = _env_port(env, "FRESHET_DEV_KAFKA_PORT", DEFAULT_KAFKA_PORT)
        if controller_port is None:
            controller_port = _env_port(env, "FRESHET_DEV_CONTROLLER_PORT", kafka_port + 1)
        if redis_port is None:
            redis_port = _env_port(env, "FRESHET_DEV_REDIS_PORT", DEFAULT_REDIS_PORT)
        return cls(
            dev_dir=dev_dir.resolve(),
            kafka_port=kafka_port,
            controller_port=controller_port,
            redis_port=redis_port,
        )

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    @property
    def lib_dir(self) -> Path:
        return self.lib_dir_override or self.dev_dir / "kafka" / "lib"

    @property
    def kafka_dir(self) -> Path:
        return self.dev_dir / "kafka"

    @property
    def kafka_data_dir(self) -> Path:
        return self.kafka_dir / "data"

    @property
    def kafka_log_dir(self) -> Path:
        return self.kafka_dir / "logs"

    @property
    def kafka_pid_file(self) -> Path:
        return self.kafka_dir / "kafka.pid"

    @property
    def server_properties(self) -> Path:
        return self.kafka_dir / "server.properties"

    @property
    def redis_dir(self) -> Path:
        return self.dev_dir / "redis"

    @property
    def redis_pid_file(self) -> Path:
        return self.redis_dir / "redis.pid"

    @property
    def redis_log_file(self) -> Path:
        return self.redis_dir / "redis.log"

    def log_file(self, service: str) -> Path:
        """The main log file of ``service`` ("kafka" or "redis")."""
        if service == "kafka":
            return self.kafka_log_dir / "server.log"
        if service == "redis":
            return self.redis_log_file
        raise ValueError(f"unknown service {service!r}; known: kafka, redis")


def default_dev_dir() -> Path:
    """``./.freshet``: the stack's data and jars live beside the project that uses them (in a
    checkout, ``make`` runs from the repository root)."""
    return Path.cwd() / ".freshet"


def _env_port(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} is not a port number") from None


@dataclass(frozen=True, kw_only=True)
class ServiceStatus:
    """What ``status`` knows of one service."""

    name: Literal["kafka", "redis"]
    address: str
    # running: started by freshet (pid file); external: healthy, but not ours; stopped.
    state: Literal["running", "external", "stopped"]
    pid: int | None = None
    version: str | None = None
    rss_bytes: int | None = None
    log_file: Path | None = None
    detail: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": self.address,
            "state": self.state,
            "pid": self.pid,
            "version": self.version,
            "rss_bytes": self.rss_bytes,
            "log_file": str(self.log_file) if self.log_file else None,
            "detail": self.detail,
        }


# --- pure helpers --------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def render_template(template: str, values: Mapping[str, object]) -> str:
    """Fill ``{name}`` placeholders; every placeholder must have a value and vice versa."""
    used = set(_PLACEHOLDER.findall(template))
    missing = used - set(values)
    if missing:
        raise KeyError(f"template placeholders without a value: {sorted(missing)}")
    unused = set(values) - used
    if unused:
        raise KeyError(f"values not used by the template: {sorted(unused)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def jar_version(lib_dir: Path, artifact: str) -> str | None:
    """The version of ``<artifact>-<version>.jar`` in ``lib_dir``, if there is one."""
    pattern = re.compile(rf"^{re.escape(artifact)}-(\d[\w.\-]*)\.jar$")
    for jar in sorted(lib_dir.glob(f"{artifact}-*.jar")):
        match = pattern.match(jar.name)
        if match:
            return match.group(1)
    return None


def jars_complete(lib_dir: Path, pom_digest: str) -> bool:
    """True when ``lib_dir`` holds the jars of exactly this pom (its stamp matches)."""
    stamp = lib_dir / ".pom.sha256"
    return (
        stamp.is_file()
        and stamp.read_text().strip() == pom_digest
        and jar_version(lib_dir, "kafka_2.13") is not None
    )


def kafka_command(config: StackConfig, java: str) -> list[str]:
    """The JVM command line of the broker (what Kafka's kafka-server-start.sh would run)."""
    heap = f"{config.kafka_heap_mb}m"
    return [
        java,
        f"-Xmx{heap}",
        "-Xms128m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={config.deploy_dir / 'log4j2.yaml'}",
        f"-Dkafka.logs.dir={config.kafka_log_dir}",
        "-cp",
        f"{config.lib_dir}/*",
        "kafka.Kafka",
        str(config.server_properties),
    ]


def redis_command(config: StackConfig, redis_server: str) -> list[str]:
    """Daemonized, loopback-only Redis without persistence, files under the dev dir."""
    return [
        redis_server,
        "--bind", HOST,
        "--port", str(config.redis_port),
        "--save", "",
        "--appendonly", "no",
        # Integration tests lease one database each (tests/integration/conftest.py).
        "--databases", "64",
        "--daemonize", "yes",
        "--pidfile", str(config.redis_pid_file),
        "--logfile", str(config.redis_log_file),
        "--dir", str(config.redis_dir),
    ]  # fmt: skip


def require_tool(name: str) -> str:
    """The path of ``name`` on PATH, or a MissingToolError saying what to install."""
    path = shutil.which(name)
    if path is None:
        raise MissingToolError(f"{name!r} not found on PATH; {_INSTALL_HINTS[name]}")
    return path


# --- health checks -------------------------------------------------------------------------


def kafka_cluster_id(bootstrap: str, *, timeout: float = 3.0) -> str | None:
    """The cluster id when a Kafka broker answers a metadata request, else None."""
    host, _, port = bootstrap.rpartition(":")
    if not processes.port_is_open(int(port), host=host, timeout=min(timeout, 1.0)):
        return None
    from confluent_kafka.admin import AdminClient  # heavy import, only when needed

    # log_level 0: librdkafka would print connection errors to stderr while a broker starts.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception:  # KafkaException on timeout; anything else also means "not healthy"
        return None
    if not metadata.brokers:
        return None
    cluster_id: str | None = metadata.cluster_id
    return cluster_id or "unknown"


def redis_server_info(port: int, *, timeout: float = 1.0) -> dict[str, object] | None:
    """Redis's INFO server section when a Redis answers on ``port``, else None."""
    if not processes.port_is_open(port, timeout=timeout):
        return None
    import redis  # only when needed
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: a health check answers now or the service is not healthy (redis-py would
    # otherwise retry a silent port three times with back-off).
    client = redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        info: dict[str, object] = client.info("server")
    except redis.RedisError:
        return None
    finally:
        client.close()
    return info


# --- jars ----------------------------------------------------------------------------------


def ensure_jars(config: StackConfig, *, echo: Echo = _quiet) -> bool:
    """Fetch the broker's jars into ``lib_dir`` unless already there; True if it downloaded."""
    pom = config.deploy_dir / "pom.xml"
    if not pom.is_file():
        raise DevStackError(f"{pom} not found: `freshet dev` needs a freshet source checkout")
    digest = file_digest(pom)
    if jars_complete(config.lib_dir, digest):
        return False
    mvn = require_tool("mvn")
    staging = config.lib_dir.with_name(config.lib_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    echo(f"fetching Kafka jars from Maven Central into {config.lib_dir} (once)")
    started = time.monotonic()
    result = subprocess.run(
        [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
         f"-Dkafka.lib.dir={staging}"],
        capture_output=True, text=True, check=False, cwd=config.deploy_dir,
    )  # fmt: skip
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise DevStackError(
            f"mvn could not fetch the Kafka jars (exit {result.returncode}):\n{tail}"
        )
    if jar_version(staging, "kafka_2.13") is None:
        raise DevStackError(f"mvn finished but {staging} holds no kafka_2.13 jar")
    (staging / ".pom.sha256").write_text(digest + "\n")
    shutil.rmtree(config.lib_dir, ignore_errors=True)
    staging.rename(config.lib_dir)
    size = sum(jar.stat().st_size for jar in config.lib_dir.glob("*.jar"))
    echo(f"fetched {size / 1e6:.1f} MB of jars in {time.monotonic() - started:.1f} s")
    return True


# --- locking and waiting -------------------------------------------------------------------


@contextlib.contextmanager
def _locked(config: StackConfig) -> Iterator[None]:
    """Serialise up/down on one dev dir (two pytest sessions may start the stack at once)."""
    config.dev_dir.mkdir(parents=True, exist_ok=True)
    with (config.dev_dir / "dev.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- Kafka ---------------------------------------------------------------------------------


def _kafka_marker(config: StackConfig) -> str:
    # Our broker's argv names its server.properties; that tells it from any other JVM.
    return str(config.server_properties)


def _format_storage(config: StackConfig, java: str, *, echo: Echo) -> None:
    """Format the KRaft storage once per (ports) layout; a new layout gets fresh storage."""
    stamp = config.kafka_dir / "format.stamp"
    layout = f"{config.kafka_port} {config.controller_port}\n"
    meta = config.kafka_data_dir / "meta.properties"
    if meta.is_file() and stamp.is_file() and stamp.read_text() == layout:
        return
    if config.kafka_data_dir.exists():
        echo(f"ports changed: wiping Kafka storage {config.kafka_data_dir}")
        shutil.rmtree(config.kafka_data_dir)
    classpath = f"{config.lib_dir}/*"
    # Any string is a valid cluster id for a dev box; the conventional form is a base64 UUID.
    cluster_id = hashlib.sha256(str(config.dev_dir).encode()).hexdigest()[:22]
    result = subprocess.run(
        [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "--standalone",
         "-t", cluster_id, "-c", str(config.server_properties)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise ServiceStartError(
            f"kafka StorageTool format failed (exit {result.returncode}): "
            f"{(result.stdout + result.stderr).strip()[-2000:]}"
        )
    stamp.write_text(layout)
    echo(f"formatted Kafka storage in {config.kafka_data_dir} (cluster id {cluster_id})")


def _start_kafka(config: StackConfig, *, echo: Echo) -> ServiceStatus:
    marker = _kafka_marker(config)
    pid = processes.read_pid(config.kafka_pid_file)
    if processes.is_our_process(pid, marker):
        assert pid is not None
        running = _configured_ports(config.server_properties)
        wanted = (config.kafka_port, config.controller_port)
        if running is not None and running != wanted:
            raise DevStackError(
                f"kafka from {config.dev_dir} is running (pid {pid}) on ports {running}, not "
                f"{wanted}; run `freshet dev down` first to move it"
            )
        if processes.wait_until(
            lambda: kafka_cluster_id(config.kafka_bootstrap, timeout=1.0) is not None,
            timeout=KAFKA_START_TIMEOUT_S,
            alive=lambda: processes.is_our_process(pid, marker),
        ):
            echo(f"kafka: already running (pid {pid}) on {config.kafka_bootstrap}")
            return _kafka_status(config)
        raise ServiceStartError(
            f"kafka (pid {pid}) is running but does not answer on {config.kafka_bootstrap}; "
            f"see {config.log_file('kafka')} or run `freshet dev down` and retry"
        )
    config.kafka_pid_file.unlink(missing_ok=True)
    if processes.port_is_open(config.kafka_port):
        if kafka_cluster_id(config.kafka_bootstrap) is not None:
            echo(f"kafka: reusing the broker already answering on {config.kafka_bootstrap}")
            return _kafka_status(config)
        raise PortTakenError(
            f"port {config.kafka_port} is taken by "
            f"{processes.describe_port_holder(config.kafka_port)}, which is not a healthy Kafka "
            "broker; stop it or pick another port with --kafka-port "
            "(or FRESHET_DEV_KAFKA_PORT)"
        )
    if processes.port_is_open(config.controller_port):
        raise PortTakenError(
            f"the Kafka controller port {config.controller_port} is taken by "
            f"{processes.describe_port_holder(config.controller_port)}; pick another with "
            "--controller-port (or FRESHET_DEV_CONTROLLER_PORT)"
        )

    java = require_tool("java")
    ensure_jars(config, echo=echo)
    config.kafka_log_dir.mkdir(parents=True, exist_ok=True)
    template = (config.deploy_dir / "server.properties.template").read_text()
    config.server_properties.write_text(
        render_template(
            template,
            {
                "kafka_port": config.kafka_port,
                "controller_port": config.controller_port,
                "data_dir": config.kafka_data_dir,
            },
        )
    )
    _format_storage(config, java, echo=echo)

    started = time.monotonic()
    pid = processes.spawn_detached(kafka_command(config, java), config.kafka_log_dir / "kafka.out")
    config.kafka_pid_file.write_text(f"{pid}\n")
    ready = processes.wait_until(
        lambda: kafka_cluster_id(config.kafka_bootstrap, timeout=1.0) is not None,
        timeout=KAFKA_START_TIMEOUT_S,
        alive=lambda: processes.is_our_process(pid, marker),
    )
    if not ready:
        processes.stop_pid(pid, marker, timeout=STOP_TIMEOUT_S)
        config.kafka_pid_file.unlink(missing_ok=True)
        tail = "\n".join(
            processes.tail_lines(config.log_file("kafka"), 15)
            + processes.tail_lines(config.kafka_log_dir / "kafka.out", 15)
        )
        raise ServiceStartError(
            f"kafka did not answer on {config.kafka_bootstrap} within "
            f"{KAFKA_START_TIMEOUT_S:.0f} s; last log lines:\n{tail}"
        )
    server_log = config.log_file("kafka")
    if not server_log.is_file() or server_log.stat().st_size == 0:
        raise ServiceStartError(
            f"kafka answers but wrote nothing to {server_log}: the Log4j 2 backend or its "
            f"SLF4J binding is missing from {config.lib_dir}"
        )
    elapsed = time.monotonic() - started
    echo(f"kafka: started (pid {pid}) on {config.kafka_bootstrap} in {elapsed:.1f} s")
    return _kafka_status(config)


def parse_listener_ports(properties: str) -> tuple[int, int] | None:
    """(PLAINTEXT port, CONTROLLER port) from the ``listeners=`` line of server.properties."""
    for line in properties.splitlines():
        if line.startswith("listeners="):
            ports = {
                name: int(address.rsplit(":", 1)[1])
                for name, _, address in (
                    item.partition("://") for item in line.split("=", 1)[1].split(",")
                )
            }
            if "PLAINTEXT" in ports and "CONTROLLER" in ports:
                return ports["PLAINTEXT"], ports["CONTROLLER"]
    return None


def _configured_ports(server_properties: Path) -> tuple[int, int] | None:
    try:
        return parse_listener_ports(server_properties.read_text())
    except (OSError, ValueError):
        return None


def _kafka_status(config: StackConfig) -> ServiceStatus:
    pid = processes.read_pid(config.kafka_pid_file)
    version = jar_version(config.lib_dir, "kafka_2.13")
    log_file = config.log_file("kafka")
    if processes.is_our_process(pid, _kafka_marker(config)):
        assert pid is not None
        healthy = kafka_cluster_id(config.kafka_bootstrap) is not None
        return ServiceStatus(
            name="kafka", address=config.kafka_bootstrap, state="running", pid=pid,
            version=version, rss_bytes=processes.rss_bytes(pid), log_file=log_file,
            detail="" if healthy else "not answering yet",
        )  # fmt: skip
    cluster_id = kafka_cluster_id(config.kafka_bootstrap)
    if cluster_id is not None:
        holder = processes.listening_pid(config.kafka_port)
        return ServiceStatus(
            name="kafka", address=config.kafka_bootstrap, state="external", pid=holder,
            rss_bytes=processes.rss_bytes(holder) if holder else None,
            detail=f"cluster {cluster_id}, not started from {config.dev_dir}",
        )  # fmt: skip
    return ServiceStatus(
        name="kafka", address=config.kafka_bootstrap, state="stopped", version=version,
        log_file=log_file,
    )  # fmt: skip


# --- Redis ---------------------------------------------------------------------------------


_REDIS_MARKER = "redis-server"


def redis_argv_port(argv: Sequence[str]) -> int | None:
    """The port in a daemonized redis-server's rewritten argv (``redis-server 127.0.0.1:6379``)."""
    for part in argv:
        _, sep, port = part.rpartition(":")
        if sep and port.isdigit():
            return int(port)
    return None


def _is_our_redis(pid: int | None) -> bool:
    # The pid comes from our dev dir's pid file; the program name guards against a reused pid.
    return processes.is_our_process(pid, _REDIS_MARKER)


def _start_redis(config: StackConfig, *, echo: Echo) -> ServiceStatus:
    pid = processes.read_pid(config.redis_pid_file)
    if _is_our_redis(pid):
        assert pid is not None
        running_port = redis_argv_port(processes.process_cmdline(pid) or [])
        if running_port is not None and running_port != config.redis_port:
            raise DevStackError(
                f"redis from {config.dev_dir} is running (pid {pid}) on port {running_port}, "
                f"not {config.redis_port}; run `freshet dev down` first to move it"
            )
        if processes.wait_until(
            lambda: redis_server_info(config.redis_port) is not None, timeout=REDIS_START_TIMEOUT_S
        ):
            echo(f"redis: already running (pid {pid}) on {HOST}:{config.redis_port}")
            return _redis_status(config)
        raise ServiceStartError(
            f"redis (pid {pid}) is running but does not answer PING on port {config.redis_port}; "
            f"see {config.redis_log_file} or run `freshet dev down` and retry"
        )
    config.redis_pid_file.unlink(missing_ok=True)
    if processes.port_is_open(config.redis_port):
        if redis_server_info(config.redis_port) is not None:
            echo(f"redis: reusing the server already answering on {HOST}:{config.redis_port}")
            return _redis_status(config)
        raise PortTakenError(
            f"port {config.redis_port} is taken by "
            f"{processes.describe_port_holder(config.redis_port)}, which is not a healthy Redis "
            "server; stop it or pick another port with --redis-port "
            "(or FRESHET_DEV_REDIS_PORT)"
        )
    redis_server = require_tool("redis-server")
    config.redis_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = subprocess.run(
        redis_command(config, redis_server), capture_output=True, text=True, check=False,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise ServiceStartError(
            f"redis-server exited with {result.returncode}: "
            f"{(result.stdout + result.stderr).strip()[-1000:]}"
        )
    ready = processes.wait_until(
        lambda: (
            redis_server_info(config.redis_port) is not None
            and _is_our_redis(processes.read_pid(config.redis_pid_file))
        ),
        timeout=REDIS_START_TIMEOUT_S,
    )
    if not ready:
        tail = "\n".join(processes.tail_lines(config.redis_log_file, 15))
        raise ServiceStartError(
            f"redis did not answer on port {config.redis_port} within "
            f"{REDIS_START_TIMEOUT_S:.0f} s; last log lines:\n{tail}"
        )
    pid = processes.read_pid(config.redis_pid_file)
    elapsed = time.monotonic() - started
    echo(f"redis: started (pid {pid}) on {HOST}:{config.redis_port} in {elapsed:.1f} s")
    return _redis_status(config)


def _redis_status(config: StackConfig) -> ServiceStatus:
    address = f"{HOST}:{config.redis_port}"
    pid = processes.read_pid(config.redis_pid_file)
    info = redis_server_info(config.redis_port)
    version = str(info["redis_version"]) if info else None
    if _is_our_redis(pid):
        assert pid is not None
        return ServiceStatus(
            name="redis", address=address, state="running", pid=pid, version=version,
            rss_bytes=processes.rss_bytes(pid), log_file=config.redis_log_file,
            detail="" if info else "not answering",
        )  # fmt: skip
    if info is not None:
        # The listening process (Redis itself, or e.g. docker-proxy); INFO's pid as a fallback.
        holder = processes.listening_pid(config.redis_port) or info.get("process_id")
        ext_pid = holder if isinstance(holder, int) else None
        return ServiceStatus(
            name="redis", address=address, state="external", pid=ext_pid, version=version,
            rss_bytes=processes.rss_bytes(ext_pid) if ext_pid else None,
            detail=f"not started from {config.dev_dir}",
        )  # fmt: skip
    return ServiceStatus(
        name="redis", address=address, state="stopped", log_file=config.redis_log_file
    )


# --- stopping ------------------------------------------------------------------------------


# --- the stack -----------------------------------------------------------------------------


def up(config: StackConfig, *, echo: Echo = _quiet) -> tuple[ServiceStatus, ServiceStatus]:
    """Bring Kafka and Redis up (or reuse healthy ones); return their status."""
    with _locked(config):
        redis_status = _start_redis(config, echo=echo)
        kafka_status = _start_kafka(config, echo=echo)
    return kafka_status, redis_status


def status(config: StackConfig) -> tuple[ServiceStatus, ServiceStatus]:
    """The state of both services, without changing anything."""
    return _kafka_status(config), _redis_status(config)


def down(config: StackConfig, *, echo: Echo = _quiet, timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop the services this dev dir started (by pid); leave anything else alone."""
    with _locked(config):
        targets = [
            ("kafka", config.kafka_pid_file, _kafka_marker(config), config.kafka_port),
            ("redis", config.redis_pid_file, _REDIS_MARKER, config.redis_port),
        ]
        for name, pid_file, marker, port in targets:
            pid = processes.read_pid(pid_file)
            if pid is None or not processes.is_our_process(pid, marker):
                pid_file.unlink(missing_ok=True)
                note = (
                    " (something else answers on its port: left alone)"
                    if processes.port_is_open(port)
                    else ""
                )
                echo(f"{name}: not running from {config.dev_dir}{note}")
                continue
            started = time.monotonic()
            how = processes.stop_pid(pid, marker, timeout=timeout)
            pid_file.unlink(missing_ok=True)
            forced = " (SIGKILL after timeout)" if how == "kill" else ""
            echo(f"{name}: stopped pid {pid} in {time.monotonic() - started:.1f} s{forced}")
