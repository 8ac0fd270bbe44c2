"""The dev stack's pure logic: configuration, rendering, jar cache, pid and /proc parsing."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from freshet.ops import devstack
from freshet.ops.devstack import StackConfig

TEMPLATE = (devstack.DEPLOY_DIR / "server.properties.template").read_text()


def _config(tmp_path: Path, **kwargs: int) -> StackConfig:
    return StackConfig(dev_dir=tmp_path, **kwargs)


def test_config_reads_ports_and_dir_from_the_given_mapping(tmp_path: Path) -> None:
    config = StackConfig.from_env(
        {
            "FRESHET_DEV_DIR": str(tmp_path / "dev"),
            "FRESHET_DEV_KAFKA_PORT": "19092",
            "FRESHET_DEV_REDIS_PORT": "16379",
        }
    )
    assert config.dev_dir == (tmp_path / "dev").resolve()
    assert (config.kafka_port, config.controller_port, config.redis_port) == (19092, 19093, 16379)
    assert config.kafka_bootstrap == "127.0.0.1:19092"
    assert config.redis_url == "redis://127.0.0.1:16379/0"
    assert config.lib_dir == config.dev_dir / "kafka" / "lib"


def test_config_defaults_to_the_standard_ports_under_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = StackConfig.from_env({})
    assert (config.kafka_port, config.controller_port, config.redis_port) == (9092, 9093, 6379)
    assert config.dev_dir == tmp_path / ".freshet"


def test_explicit_arguments_win_over_the_environment(tmp_path: Path) -> None:
    config = StackConfig.from_env(
        {"FRESHET_DEV_KAFKA_PORT": "19092"}, dev_dir=tmp_path, kafka_port=29092, redis_port=26379
    )
    assert (config.kafka_port, config.controller_port, config.redis_port) == (29092, 29093, 26379)


def test_a_non_numeric_port_variable_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"FRESHET_DEV_REDIS_PORT='six'"):
        StackConfig.from_env({"FRESHET_DEV_REDIS_PORT": "six"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kafka_port": 0}, "kafka_port 0 is not a TCP port"),
        ({"redis_port": 70000}, "redis_port 70000 is not a TCP port"),
        ({"kafka_port": 7000, "redis_port": 7000}, "ports must differ"),
    ],
)
def test_invalid_ports_are_rejected(tmp_path: Path, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **kwargs)


def test_server_properties_render_the_ports_and_data_dir(tmp_path: Path) -> None:
    text = devstack.render_template(
        TEMPLATE, {"kafka_port": 19092, "controller_port": 19093, "data_dir": tmp_path}
    )
    lines = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert lines["process.roles"] == "broker,controller"
    assert lines["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert lines["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert lines["log.dirs"] == str(tmp_path)
    assert lines["auto.create.topics.enable"] == "true"
    assert lines["num.partitions"] == "3"
    assert "{" not in text


def test_rendering_refuses_missing_and_unused_values() -> None:
    with pytest.raises(KeyError, match="without a value: \\['data_dir'\\]"):
        devstack.render_template(TEMPLATE, {"kafka_port": 1, "controller_port": 2})
    with pytest.raises(KeyError, match="not used by the template: \\['extra'\\]"):
        devstack.render_template("{a}", {"a": 1, "extra": 2})


def test_jar_cache_is_complete_only_with_the_kafka_jar_and_a_matching_pom_stamp(
    tmp_path: Path,
) -> None:
    assert not devstack.jars_complete(tmp_path, "abc")
    (tmp_path / "kafka_2.13-4.3.1.jar").write_bytes(b"")
    assert not devstack.jars_complete(tmp_path, "abc")  # no stamp: an interrupted download
    (tmp_path / ".pom.sha256").write_text("abc\n")
    assert devstack.jars_complete(tmp_path, "abc")
    assert not devstack.jars_complete(tmp_path, "def")  # the pom changed


def test_jar_version_reads_the_artifact_version_from_the_file_name(tmp_path: Path) -> None:
    for name in ("kafka-clients-4.3.1.jar", "kafka_2.13-4.3.1.jar", "kafka-raft-4.3.1.jar"):
        (tmp_path / name).write_bytes(b"")
    assert devstack.jar_version(tmp_path, "kafka_2.13") == "4.3.1"
    assert devstack.jar_version(tmp_path, "kafka") is None  # kafka-clients is another artifact
    assert devstack.jar_version(tmp_path, "redis") is None


def test_kafka_runs_with_a_small_heap_and_the_repo_logging_config(tmp_path: Path) -> None:
    config = _config(tmp_path)
    argv = devstack.kafka_command(config, "/usr/bin/java")
    assert "-Xmx512m" in argv
    assert f"-Dlog4j2.configurationFile={devstack.DEPLOY_DIR / 'log4j2.yaml'}" in argv
    assert argv[-2:] == ["kafka.Kafka", str(config.server_properties)]
    assert argv[argv.index("-cp") + 1] == f"{config.lib_dir}/*"


def test_redis_runs_on_loopback_without_persistence(tmp_path: Path) -> None:
    argv = devstack.redis_command(_config(tmp_path, redis_port=16379), "redis-server")
    pairs = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert pairs["--bind"] == "127.0.0.1"
    assert pairs["--port"] == "16379"
    assert pairs["--save"] == ""
    assert pairs["--appendonly"] == "no"
    assert pairs["--pidfile"] == str(tmp_path / "redis" / "redis.pid")


def test_a_missing_tool_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(devstack.MissingToolError, match="apt-get install -y redis-server"):
        devstack.require_tool("redis-server")
    with pytest.raises(devstack.MissingToolError, match="apt-get install -y maven"):
        devstack.require_tool("mvn")


def test_a_port_held_by_something_else_is_refused_with_the_port_and_the_override(
    tmp_path: Path,
) -> None:
    # A plain TCP listener: open, but neither Kafka nor Redis.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        config = StackConfig(
            dev_dir=tmp_path, redis_port=port, kafka_port=port + 1 if port < 65000 else 1025
        )
        with pytest.raises(
            devstack.PortTakenError,
            match=rf"port {port} is taken by pid {os.getpid()}.*--redis-port",
        ):
            devstack.up(config)


def test_the_running_brokers_ports_are_read_back_from_its_server_properties(
    tmp_path: Path,
) -> None:
    text = devstack.render_template(
        TEMPLATE, {"kafka_port": 19092, "controller_port": 19093, "data_dir": tmp_path}
    )
    assert devstack.parse_listener_ports(text) == (19092, 19093)
    assert devstack.parse_listener_ports("# nothing here\n") is None


def test_a_daemonized_redis_port_is_read_from_its_rewritten_argv() -> None:
    assert devstack.redis_argv_port(["redis-server 127.0.0.1:16379"]) == 16379
    assert devstack.redis_argv_port(["redis-server", "*:6379"]) == 6379
    assert devstack.redis_argv_port(["redis-server"]) is None
