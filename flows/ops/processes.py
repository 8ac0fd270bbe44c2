"""Local processes seen through pid files and Linux ``/proc``: liveness, memory, who listens on
a port, starting a program detached from us and stopping it by pid.

Used by ``freshet.ops.devstack``; nothing here knows about Kafka or Redis.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

__all__ = [
    "LOOPBACK",
    "describe_port_holder",
    "is_our_process",
    "listening_pid",
    "parse_listening_inodes",
    "port_is_open",
    "process_cmdline",
    "read_pid",
    "rss_bytes",
    "spawn_detached",
    "stop_pid",
    "tail_lines",
    "wait_until",
]

LOOPBACK = "127.0.0.1"


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def process_cmdline(pid: int) -> list[str] | None:
    """The argv of a live (non-zombie) process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The state letter follows the parenthesised command name; zombies are already dead.
    if stat.rsplit(")", 1)[-1].split()[0] in {"Z", "X"} or not raw:
        return None
    return [part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0")]


def is_our_process(pid: int | None, marker: str) -> bool:
    """True when ``pid`` is alive and its command line contains ``marker``."""
    if pid is None:
        return False
    argv = process_cmdline(pid)
    return argv is not None and any(marker in part for part in argv)


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def port_is_open(port: int, *, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def parse_listening_inodes(proc_net_tcp: str, port: int) -> set[str]:
    """Socket inodes listening on ``port`` in the text of /proc/net/tcp or /proc/net/tcp6."""
    inodes: set[str] = set()
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            inodes.add(inode)
    return inodes


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` (Linux /proc; None when unknown)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            inodes |= parse_listening_inodes(Path(table).read_text(), port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        return int(proc.name)
    return None


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of a text file (empty when it does not exist)."""
    if count <= 0 or not path.is_file():
        return []
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        block = 64 * 1024
        data = b""
        while size > 0 and data.count(b"\n") <= count:
            step = min(block, size)
            size -= step
            handle.seek(size)
            data = handle.read(step) + data
    return data.decode(errors="replace").splitlines()[-count:]


def wait_until(
    check: Callable[[], bool], *, timeout: float, alive: Callable[[], bool] = lambda: True
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if not alive():
            return False
        time.sleep(0.2)
    return check()


def describe_port_holder(port: int) -> str:
    pid = listening_pid(port)
    if pid is None:
        return "an unknown process"
    argv = process_cmdline(pid) or ["?"]
    return f"pid {pid} ({shlex.join(argv)[:120]})"


def spawn_detached(argv: Sequence[str], out_file: Path) -> int:
    """Start ``argv`` in its own session, detached from us, and return its pid.

    A shell starts it in the background and exits at once, so no Popen object outlives this
    call (pytest would flag it as a leaked resource) and the process survives our exit.
    """
    script = f"exec {shlex.join(argv)} </dev/null >>{shlex.quote(str(out_file))} 2>&1 & echo $!"
    result = subprocess.run(
        ["/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
    )
    return int(result.stdout.strip())


def stop_pid(pid: int, marker: str, *, timeout: float) -> Literal["term", "kill", "gone"]:
    """SIGTERM ``pid`` (if it is still ours), wait for it, SIGKILL after ``timeout``."""
    if not is_our_process(pid, marker):
        return "gone"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_until(lambda: not is_our_process(pid, marker), timeout=timeout):
        return "term"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not is_our_process(pid, marker), timeout=10.0)
    return "kill"
