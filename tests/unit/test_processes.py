"""Local processes through pid files and /proc: liveness, memory, listeners, log tails."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from freshet.ops import processes

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2384 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1
   1: 0100007F:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5151 1
   2: 0100007F:2384 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 6161 1
"""


def test_pid_files_with_garbage_or_missing_read_as_no_pid(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    assert processes.read_pid(pid_file) is None
    pid_file.write_text("not a pid\n")
    assert processes.read_pid(pid_file) is None
    pid_file.write_text("1234\n")
    assert processes.read_pid(pid_file) == 1234


def test_our_process_is_recognised_by_pid_and_command_line() -> None:
    me = os.getpid()
    assert processes.is_our_process(me, "pytest") or processes.is_our_process(me, "python")
    assert not processes.is_our_process(me, "kafka.Kafka /nowhere/server.properties")
    assert not processes.is_our_process(None, "python")
    assert not processes.is_our_process(2**22 + 12345, "python")  # above pid_max: no process
    assert (processes.rss_bytes(me) or 0) > 1_000_000


def test_listening_sockets_are_found_by_port_in_proc_net_tcp() -> None:
    assert processes.parse_listening_inodes(PROC_NET_TCP, 9092) == {"4242"}  # 0x2384
    assert processes.parse_listening_inodes(PROC_NET_TCP, 6379) == {"5151"}  # 0x18EB
    assert processes.parse_listening_inodes(PROC_NET_TCP, 1234) == set()


def test_the_pid_listening_on_a_port_is_found() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert processes.port_is_open(port)
        assert processes.listening_pid(port) == os.getpid()
    assert not processes.port_is_open(port)


def test_tail_lines_returns_the_last_lines_of_a_big_file(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("".join(f"line {i}\n" for i in range(100_000)))
    assert processes.tail_lines(log, 3) == ["line 99997", "line 99998", "line 99999"]
    assert processes.tail_lines(log, 0) == []
    assert processes.tail_lines(tmp_path / "missing.log", 5) == []


def test_a_zombie_counts_as_gone() -> None:
    import os
    import subprocess

    child = subprocess.Popen(["true"])
    try:
        # Wait for it to exit without reaping it (WNOWAIT): no polling against a deadline.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        # Exited but not reaped yet: still in the process table, yet not alive.
        assert Path(f"/proc/{child.pid}").exists()
        assert processes.process_cmdline(child.pid) is None
    finally:
        child.wait()


def test_a_detached_process_outlives_its_starter_and_stops_by_pid(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker")
    out = tmp_path / "out.log"
    pid = processes.spawn_detached(
        [sys.executable, "-c", "import time; time.sleep(60)", marker], out
    )
    try:
        assert processes.is_our_process(pid, marker)
        assert os.getsid(pid) != os.getsid(0)  # its own session: Ctrl-C here does not reach it
        assert processes.stop_pid(pid, marker, timeout=10) == "term"
        assert not processes.is_our_process(pid, marker)
        assert processes.stop_pid(pid, marker, timeout=10) == "gone"
    finally:
        if processes.is_our_process(pid, marker):
            os.kill(pid, 9)


def test_a_free_port_can_be_bound_and_cluster_addresses_are_distinct() -> None:
    port = processes.free_port()
    with socket.socket() as sock:
        sock.bind((processes.LOOPBACK, port))
    addresses = processes.cluster_addresses(3).split(";")
    assert len(set(addresses)) == 3
    assert all(a.startswith(f"{processes.LOOPBACK}:") for a in addresses)


def test_die_with_parent_does_nothing_where_there_is_no_prctl(monkeypatch: Any) -> None:
    def no_libc(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError("no C library here")

    monkeypatch.setattr(processes.ctypes, "CDLL", no_libc)
    processes.die_with_parent()  # no error

    monkeypatch.setattr(processes.ctypes, "CDLL", lambda *_a, **_k: object())  # no prctl
    processes.die_with_parent()


def test_a_child_of_die_with_parent_is_killed_with_its_parent(tmp_path: Path) -> None:
    # A middle process starts a child with die_with_parent, prints its pid and exits at once.
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys\n"
        "from freshet.ops.processes import die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " preexec_fn=die_with_parent)\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    child = int(pid_file.read_text())
    assert processes.wait_until(lambda: processes.process_cmdline(child) is None, timeout=10)


def test_a_process_group_reports_the_first_failure_and_stops_the_rest() -> None:
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    fail = [sys.executable, "-c", "import sys; sys.exit(3)"]
    with processes.ProcessGroup([fail, sleep]) as group:
        assert processes.wait_until(lambda: group.poll() is not None, timeout=30)
        assert group.poll() == 3
        assert group.stop(timeout=10) == 3  # the sleeper got SIGTERM
    assert all(p.returncode is not None for p in group.processes)


def test_a_process_group_of_successes_polls_zero() -> None:
    ok = [sys.executable, "-c", "pass"]
    group = processes.ProcessGroup([ok, ok])
    assert processes.wait_until(lambda: group.poll() is not None, timeout=30)
    assert group.poll() == 0
    assert group.stop() == 0
