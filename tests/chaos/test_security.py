"""Security settings pass through and secrets stay secret, on real servers.

One flow and one endpoint (``freshet serve``) run with every credential set: the flow reads a
SASL/PLAIN listener of a private broker (``FRESHET_KAFKA_CONFIG_*`` pass-through) and writes to
Redis as an ACL user allowed only the commands the writer needs; the endpoint reads as an ACL
user with read-only key access and API keys scoped per view. Then no password or key may be
found in any log, in either ``/metrics``, in the HTTP answers or in the files the flow wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from pipeline_harness import (
    VIEW,
    FlowProcess,
    Reference,
    check_redis,
    flow_args,
    flow_env,
    offline_rows,
    passes,
    produce_stream,
    read_topic,
    scrape,
    wait_until,
)
from private_stack import SASL_PASSWORD, SASL_USER, private_stack, sasl_listener_lines
from redis_servers import free_port

from freshet.ops import devstack

ADMIN_PASSWORD = "redis-Admin-pw-3Kd"
FLOW_USER, FLOW_PASSWORD = "freshet-flow", "redis-Flow-pw-8Jm"
SERVE_USER, SERVE_PASSWORD = "freshet-serve", "redis-Serve-pw-2Wz"
CARD_KEY, ALL_KEY, WRONG_KEY = "apikey-Card-5Tg", "apikey-All-9Hv", "apikey-Wrong-4Lp"
WRONG_PASSWORD = "redis-Wrong-pw-6Rb"
SECRETS = (SASL_PASSWORD, ADMIN_PASSWORD, FLOW_PASSWORD, SERVE_PASSWORD, CARD_KEY, ALL_KEY)

# Only what RedisFeatureWriter sends (PING when built, SCRIPT LOAD once, EVALSHA per batch)
# and what its Lua script calls (GET, SET), on freshet's keys only.
FLOW_ACL = ["resetkeys", "~fs:*", "resetchannels", "-@all"]
FLOW_ACL += ["+ping", "+script|load", "+evalsha", "+get", "+set"]
# The endpoint: MGET and PING, read-only access to freshet's keys.
SERVE_ACL = ["resetkeys", "%R~fs:*", "resetchannels", "-@all", "+mget", "+ping"]


def _setup_acl(port: int) -> redis.Redis:
    """Users for the flow and the endpoint; the default user gets a password. Returns an
    admin client."""
    plain = redis.Redis(port=port)
    plain.execute_command("ACL", "SETUSER", FLOW_USER, "on", f">{FLOW_PASSWORD}", *FLOW_ACL)
    plain.execute_command("ACL", "SETUSER", SERVE_USER, "on", f">{SERVE_PASSWORD}", *SERVE_ACL)
    plain.execute_command("ACL", "SETUSER", "default", f">{ADMIN_PASSWORD}")
    plain.close()
    return redis.Redis(port=port, password=ADMIN_PASSWORD)


def _url(user: str, password: str, port: int) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{port}/0"


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    freshet = [sys.executable, "-c", "import sys; from freshet.cli import main; sys.exit(main())"]
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*freshet, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def sasl_stack(dev_stack: devstack.StackConfig, tmp_path: Path) -> Iterator[tuple[str, str, int]]:
    """(PLAINTEXT bootstrap, SASL bootstrap, Redis port) of a private stack."""
    sasl_port = free_port()
    extra = sasl_listener_lines(sasl_port)
    with private_stack(dev_stack, tmp_path / "stack", extra_properties=extra) as stack:
        yield stack.kafka_bootstrap, f"127.0.0.1:{sasl_port}", stack.redis_port


def test_sasl_kafka_acl_redis_and_api_keys_work_and_no_secret_leaks(
    sasl_stack: tuple[str, str, int], offline_dir: Path, tmp_path: Path
) -> None:
    plain_bootstrap, sasl_bootstrap, redis_port = sasl_stack
    topic, dlq = "secure-transactions", "secure-transactions.dlq"
    admin = AdminClient({"bootstrap.servers": plain_bootstrap})
    for future in admin.create_topics([NewTopic(topic, 3, 1), NewTopic(dlq, 1, 1)]).values():
        future.result(timeout=30)
    counts = produce_stream(plain_bootstrap, topic, 3_000, seed=71)
    ref = Reference.of(VIEW, read_topic(plain_bootstrap, topic))
    # The SASL listener refuses a client without credentials.
    with pytest.raises(KafkaException):
        AdminClient({"bootstrap.servers": sasl_bootstrap, "log_level": 0}).list_topics(timeout=3)

    redis_admin = _setup_acl(redis_port)
    kafka_security = {
        "FRESHET_KAFKA_CONFIG_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "FRESHET_KAFKA_CONFIG_SASL_MECHANISM": "PLAIN",
        "FRESHET_KAFKA_CONFIG_SASL_USERNAME": SASL_USER,
        "FRESHET_KAFKA_CONFIG_SASL_PASSWORD": SASL_PASSWORD,
    }
    flow_port, serve_port = free_port(), free_port()
    env = {
        **flow_env(sasl_bootstrap, _url(FLOW_USER, FLOW_PASSWORD, redis_port), offline_dir),
        **kafka_security,
    }
    serve_env = {
        "FRESHET_REDIS_URL": _url(SERVE_USER, SERVE_PASSWORD, redis_port),
        "FRESHET_API_KEYS": f"{CARD_KEY}:card_txn;{ALL_KEY}:*",
    }
    flow_log, serve_log = tmp_path / "flow.log", tmp_path / "serve.log"
    label = f'{{view="{VIEW.name}"}}'
    args = flow_args(topic, dlq, "--recovery-dir", str(tmp_path / "recovery"))
    args[args.index("--metrics-port") + 1] = str(flow_port)
    serve = _serve(serve_env, serve_port, serve_log)
    answers: list[str] = []
    try:
        with FlowProcess(args, env=env, log=flow_log) as flow:
            wait_until(
                lambda: scrape(flow_port).get(f"freshet_events_in_total{label}") == counts.total,
                timeout=60,
                what="the flow to read every record over SASL",
            )
            wait_until(passes(lambda: check_redis(redis_admin, ref)), timeout=30, what="Redis")
            wait_until(
                passes(lambda: ref.check_rows(offline_rows(offline_dir, VIEW))),
                timeout=30,
                what="the offline log",
            )
            flow_metrics = httpx.get(f"http://127.0.0.1:{flow_port}/metrics").text
            assert flow.proc.poll() is None, flow.output()

        url = f"http://127.0.0.1:{serve_port}"
        wait_until(
            lambda: _ready(url), timeout=30, what="freshet serve to be ready with the ACL user"
        )
        card = sorted(ref.applied)[0]
        with httpx.Client(base_url=url, timeout=5) as http:
            ok = http.get(f"/v1/features/card_txn/{card}", headers=_bearer(CARD_KEY))
            assert ok.status_code == 200, ok.text
            assert ok.json()["found"] is True
            batch = http.post(
                "/v1/features/card_txn",
                json={"entities": [card, "nobody"]},
                headers=_bearer(ALL_KEY),
            )
            assert [r["found"] for r in batch.json()["results"]] == [True, False]
            denied = {
                "no key": http.get(f"/v1/features/card_txn/{card}"),
                "wrong key": http.get(f"/v1/features/card_txn/{card}", headers=_bearer(WRONG_KEY)),
                "out of scope": http.get(
                    f"/v1/features/card_txn_json/{card}", headers=_bearer(CARD_KEY)
                ),
            }
            assert {k: r.status_code for k, r in denied.items()} == {
                "no key": 401,
                "wrong key": 401,
                "out of scope": 403,
            }
            serve_metrics = http.get("/metrics").text
            answers = [ok.text, batch.text, *(r.text for r in denied.values())]
            assert WRONG_KEY not in "".join(answers)
    finally:
        serve.terminate()
        serve.wait(timeout=20)

    # The endpoint's Redis user cannot write: not a key, not through the writer's script.
    reader = redis.Redis.from_url(_url(SERVE_USER, SERVE_PASSWORD, redis_port))
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.set(f"fs:card_txn:1:{{{card}}}", b"x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.execute_command("EVAL", "return 1", 0)
    assert reader.mget([f"fs:card_txn:1:{{{card}}}"])[0] is not None
    # The flow's user can do nothing beyond the writer's commands and freshet's keys.
    writer = redis.Redis.from_url(_url(FLOW_USER, FLOW_PASSWORD, redis_port))
    for command in (("FLUSHDB",), ("KEYS", "*"), ("CONFIG", "GET", "*"), ("SET", "other", "x")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            writer.execute_command(*command)
    reader.close()
    writer.close()
    redis_admin.close()

    # A wrong Redis password stops the flow at start, saying so without showing it.
    wrong_env = {**env, "FRESHET_REDIS_URL": _url(FLOW_USER, WRONG_PASSWORD, redis_port)}
    wrong = FlowProcess(args, env=wrong_env, log=tmp_path / "wrong.log")
    assert wrong.wait(timeout=60) != 0
    wrong_log = wrong.log.read_text(errors="replace")
    assert "invalid username-password pair" in wrong_log, wrong_log[-3000:]
    assert WRONG_PASSWORD not in wrong_log

    # No secret anywhere: logs, /metrics, HTTP answers, files the flow wrote.
    texts = {
        "flow log": flow_log.read_text(errors="replace"),
        "serve log": serve_log.read_text(errors="replace"),
        "flow /metrics": flow_metrics,
        "serve /metrics": serve_metrics,
        "HTTP answers": "".join(answers),
    }
    for path in (tmp_path / "recovery").rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    leaks = [(where, s) for where, text in texts.items() for s in SECRETS if s in text]
    assert not leaks, leaks
    assert "Traceback" not in texts["serve log"], texts["serve log"][-3000:]
    print(
        f"\nsecured run: {counts.total} records over SASL/PLAIN, {len(ref.applied)} cards "
        f"written by ACL user {FLOW_USER!r} and served by read-only {SERVE_USER!r}; "
        f"{len(SECRETS)} secrets searched in {len(texts)} logs/answers/files: 0 found"
    )


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        time.sleep(0.1)
        return False


def _tls_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """A redis-server answering only TLS on a free port, with a self-signed certificate for
    127.0.0.1; returns (process, port, the certificate, which is its own CA)."""
    workdir.mkdir(parents=True)
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(
        host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert), socket_connect_timeout=0.5
    )
    try:
        wait_until(passes(lambda: _assert_ping(client)), timeout=10, what="Redis over TLS")
    except BaseException:
        proc.kill()
        proc.wait(timeout=10)
        raise
    finally:
        client.close()
    return proc, port, cert


def _assert_ping(client: redis.Redis) -> None:
    try:
        assert client.ping()
    except redis.ConnectionError as exc:
        raise AssertionError(str(exc)) from exc


def test_flow_and_endpoint_reach_redis_over_tls_and_refuse_an_unknown_certificate(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    offline_dir: Path,
    tmp_path: Path,
) -> None:
    server, port, cert = _tls_redis(tmp_path / "redis-tls")
    url = f"rediss://127.0.0.1:{port}/0"
    topic, dlq = topic_factory(3), topic_factory(1)
    counts = produce_stream(kafka_bootstrap, topic, 1_000, seed=72)
    ref = Reference.of(VIEW, read_topic(kafka_bootstrap, topic))
    # The test CA reaches both clients the standard way: OpenSSL's SSL_CERT_FILE.
    env = {**flow_env(kafka_bootstrap, url, offline_dir), "SSL_CERT_FILE": str(cert)}
    admin = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert))
    serve_port = free_port()
    serve = _serve({"FRESHET_REDIS_URL": url, "SSL_CERT_FILE": str(cert)}, serve_port,
                   tmp_path / "serve.log")  # fmt: skip
    try:
        run = FlowProcess(flow_args(topic, dlq, "--stop-at-end"), env=env, log=tmp_path / "f.log")
        assert run.wait(timeout=60) == 0, run.output()
        check_redis(admin, ref)
        base = f"http://127.0.0.1:{serve_port}"
        wait_until(lambda: _ready(base), timeout=30, what="freshet serve over TLS")
        card = sorted(ref.applied)[0]
        response = httpx.get(f"{base}/v1/features/card_txn/{card}")
        assert response.json()["found"] is True
        # Without the CA the certificate is refused: the flow stops at start, saying why.
        untrusted = FlowProcess(
            flow_args(topic, dlq, "--stop-at-end"),
            env={**env, "SSL_CERT_FILE": str(tmp_path / "none.pem")},
            log=tmp_path / "untrusted.log",
        )
        assert untrusted.wait(timeout=60) != 0
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.log.read_text(), untrusted.output()
    finally:
        serve.terminate()
        serve.wait(timeout=20)
        admin.close()
        server.kill()
        server.wait(timeout=10)
    print(f"\nRedis over TLS: {counts.total} records written by the flow, served by the endpoint")
