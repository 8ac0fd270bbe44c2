"""Private ``redis-server`` processes for tests that restart Redis or need a cluster.

The shared stack's Redis must not be restarted under other tests, so those tests start their
own throwaway servers on free loopback ports here.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

import redis

__all__ = ["RedisProcess", "free_port", "start_cluster"]

_START_TIMEOUT_S = 10.0


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def free_port() -> int:
    """A free loopback port for a server to listen on, below the kernel's ephemeral range.

    A port from the ephemeral range (what binding port 0 gives) can be taken by any outgoing
    connection between this call and the server's bind: CI once lost a Redis Cluster node that
    way. Ports below the range are only ever taken by listeners; ports handed out earlier in
    this process are not handed out again."""
    return free_port_block(1)


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free ports (``freshet run -p N --metrics-port P`` serves
    process i on ``P + i``), taken below the kernel's ephemeral range so that no outgoing
    connection grabs one of them between this call and the server's bind."""
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, low - count)
        if _handed_out.intersection(range(base, base + count)):
            continue
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            _handed_out.update(range(base, base + count))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports below {low}")


class RedisProcess:
    """One ``redis-server`` on 127.0.0.1:``port`` with no persistence; ``start``/``stop``."""

    def __init__(
        self, port: int, workdir: Path, *, cluster: bool = False, password: str | None = None
    ) -> None:
        self.port = port
        self.workdir = workdir
        self.cluster = cluster
        self.password = password
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
        ]  # fmt: skip
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.cluster:
            # The bus port defaults to port + 10000, past 65535 for high free ports: pick one.
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-port", str(free_port())]
        log = self.workdir / "redis-server.log"
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
        deadline = time.monotonic() + _START_TIMEOUT_S
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self._proc.poll() is not None:
                        tail = log.read_text(errors="replace").splitlines()[-5:]
                        raise RuntimeError(
                            f"redis-server on port {self.port} did not start: " + " | ".join(tail)
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=_START_TIMEOUT_S)
            self._proc = None


def start_cluster(workdir: Path, nodes: int = 3) -> list[RedisProcess]:
    """A ``nodes``-primary Redis Cluster, all slots assigned; stop each process when done."""
    procs = [RedisProcess(free_port(), workdir / f"node{i}", cluster=True) for i in range(nodes)]
    try:
        for proc in procs:
            proc.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create"]
            + [f"127.0.0.1:{p.port}" for p in procs]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        for proc in procs:
            client = redis.Redis(port=proc.port)
            while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node {proc.port} never reached cluster_state:ok")
                time.sleep(0.05)
            client.close()
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return procs
