"""README "Your first view", followed as written: its files saved in a directory outside the
repository, its shell commands run there in order, against the real Kafka and Redis.

What the test changes, and why: the topic name (``"payments"`` -> a unique name, so runs never
share a topic; the view module and the producer both name it), the endpoint's port (a free one,
in ``freshet serve`` and in the ``curl`` URL) and the flow's metrics port (off), Redis database
and offline dir (this test's own). ``freshet`` is the installed console script, not ``python
-m``, so ``FRESHET_VIEWS=my_views`` is found the way a user's shell finds it. The served
values are checked against a brute force over the events read back from the topic, and against
the values the README promises.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.admin import AdminClient
from pipeline_harness import read_topic, wait_until
from redis_servers import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
TOPIC = "payments"  # the README's topic name, replaced by a unique one
VIEW = "user_payments"
BIN = Path(sys.executable).parent


def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Your first view")
    return text[start : text.index("\n## ", start + 1)]


def readme_files(section: str) -> dict[str, str]:
    """``Save this as `NAME`…`` followed by a fenced block: NAME -> the block's text."""
    found = re.findall(r"Save this as `([^`]+)`.*?```\w*\n(.*?)```", section, re.S)
    return dict(found)


def readme_commands(section: str) -> list[str]:
    """The lines of the ```bash block, comments stripped."""
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "README 'Your first view' has no bash block"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def readme_promise(section: str) -> dict[str, Any]:
    """The ``"features": {…}`` the README says ``curl`` answers for u1."""
    match = re.search(r'"features":\s*(\{[^}]*\})', section)
    assert match is not None, "README 'Your first view' shows no features answer"
    promised: dict[str, Any] = json.loads(match.group(1))
    return promised


def expected_values(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The view's features per user, by brute force over its events (in topic order per
    user): as of the user's newest event T, a window W with hop h covers
    [floor_h(T - W), T] (DESIGN.md, "Value as of time T")."""
    by_user: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_user.setdefault(event["user_id"], []).append(event)

    def window(evs: list[dict[str, Any]], w_s: int, h_s: int) -> list[float]:
        t = max(e["ts"] for e in evs)
        lo = (t - w_s * 1000) // (h_s * 1000) * (h_s * 1000)
        return [e["amount"] for e in evs if lo <= e["ts"] <= t]

    return {
        user: {
            "payments_1h": len(window(evs, 3600, 60)),
            "amount_sum_1h": sum(window(evs, 3600, 60)),
            "amount_max_1d": max(window(evs, 86_400, 900)),
            "last_amount": evs[-1]["amount"],
        }
        for user, evs in by_user.items()
    }


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "first_view"
    path.mkdir()
    assert Path(__file__).resolve().parents[2] not in path.resolve().parents
    return path


@pytest.fixture
def topic(kafka_admin: AdminClient) -> Iterator[str]:
    name = f"test-first-view-{uuid.uuid4().hex[:8]}"
    yield name
    listed = kafka_admin.list_topics(timeout=10).topics
    mine = [t for t in (name, f"{name}.dlq") if t in listed]
    if mine:
        for future in kafka_admin.delete_topics(mine, operation_timeout=30).values():
            future.result(timeout=30)


@pytest.mark.timeout(120)
def test_the_readme_first_view_walkthrough_serves_what_its_events_say(
    kafka_bootstrap: str, redis_url: str, workdir: Path, topic: str
) -> None:
    section = readme_section()
    files = readme_files(section)
    assert set(files) == {"payment.avsc", "my_views.py", "produce.py"}
    for name, text in files.items():
        if name.endswith(".py"):
            assert f'"{TOPIC}"' in text, f"{name} should name the topic {TOPIC!r}"
            text = text.replace(f'"{TOPIC}"', f'"{topic}"')
        (workdir / name).write_text(text, encoding="utf-8")

    env = {k: v for k, v in os.environ.items() if k != "FRESHET_VIEWS"}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        FRESHET_KAFKA_BOOTSTRAP=kafka_bootstrap,
        FRESHET_REDIS_URL=redis_url,
        FRESHET_OFFLINE_DIR=str(workdir / "data" / "offline"),
    )
    env.pop("PYTHONPATH", None)  # only what the walkthrough itself puts on the path
    port = free_port()
    background: list[subprocess.Popen[bytes]] = []
    ran: list[str] = []
    expected: dict[str, dict[str, Any]] = {}

    def expect() -> dict[str, dict[str, Any]]:
        if not expected:  # once the events are produced
            events = [json.loads(m.value) for m in read_topic(kafka_bootstrap, topic)]
            expected.update(expected_values(events))
            assert sorted(expected) == ["u1", "u2"]
        return expected

    try:
        for command in readme_commands(section):
            argv = shlex.split(command.removesuffix("&"))
            if argv[0] == "export":
                name, _, value = argv[1].partition("=")
                env[name] = value
            elif command.endswith("&"):
                if argv[:2] == ["freshet", "serve"]:
                    argv += ["--port", str(port)]
                if argv[:2] == ["freshet", "run"]:
                    argv += ["--metrics-port", "0"]
                with open(workdir / f"{argv[1]}.log", "wb") as log:
                    background.append(
                        subprocess.Popen(argv, cwd=workdir, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
                    )  # fmt: skip
            elif argv[0] == "curl":
                url = argv[-1].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                wait_until(lambda: _ready(port), timeout=30, what="freshet serve")
                served = json.loads(_run([*argv[:-1], url], workdir, env))
                assert served["found"], served
                assert served["status"] == dict.fromkeys(served["features"], "present")
                check_u1(served["features"], expect()["u1"], readme_promise(section))
            elif argv[:2] == ["freshet", "get"]:
                for user, values in expect().items():
                    got = wait_until(
                        lambda a=argv, u=user, v=values: _got(a, u, v, workdir, env),
                        timeout=30,
                        what=f"freshet get {VIEW} {user} to show {values}",
                    )
                    assert got == pytest.approx(values)
                _run(argv, workdir, env)  # as written: the table
            else:
                output = _run(argv, workdir, env)
                check_output(argv, output, topic)
            ran.append(command)
    except BaseException:
        for log in sorted(workdir.glob("*.log")):
            sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}\n")
        raise
    finally:
        codes = [_stop(proc) for proc in background]
    assert len(ran) == len(readme_commands(section))
    flow, serve = codes
    assert flow == 0, "SIGTERM stops the flow cleanly"
    # SIGTERM stops the endpoint cleanly too: in-flight requests finish, exit 0.
    assert serve == 0
    assert "Application shutdown complete" in (workdir / "serve.log").read_text()


def check_output(argv: list[str], output: str, topic: str) -> None:
    if argv[:2] == ["freshet", "views"]:
        assert VIEW in output
        assert "card_txn" not in output, "FRESHET_VIEWS set: the demo views are not registered"
    if argv[:3] == ["freshet", "topics", "create"]:
        assert re.search(rf"created\s+{re.escape(topic)}\s+3 partitions", output), output
        assert re.search(rf"created\s+{re.escape(topic)}\.dlq\s+1 partition", output), output


def check_u1(served: dict[str, Any], expected: dict[str, Any], promised: dict[str, Any]) -> None:
    assert served == pytest.approx(expected)
    assert promised == pytest.approx(expected), "the README's example answer is wrong"


def _got(argv: list[str], user: str, values: dict[str, Any], cwd: Path, env: dict[str, str]) -> Any:
    lookup = json.loads(_run([*argv[:2], VIEW, user, "--json"], cwd, env))
    features = lookup["features"]
    if not lookup["found"] or features != pytest.approx(values):
        return None
    return features


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{shlex.join(argv)} exited {result.returncode}:\n" + (
        result.stdout + result.stderr
    )
    return result.stdout


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return None
