"""The Confluent wire format with writer schemas from a schema registry.

A real HTTP server on 127.0.0.1 plays the registry (``GET /schemas/ids/<id>``, as Confluent's
REST API answers it); records are written with fastavro under the writer schema their id names.
"""

from __future__ import annotations

import io
import json
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from loopback_http import QuietHandler, loopback_server

from freshet.decode.decoder import decoder_for, load_schema
from freshet.decode.messages import RawMessage
from freshet.decode.schema_registry import (
    SchemaRegistry,
    SchemaRegistryError,
    SchemaRegistryUnavailable,
)
from freshet.dsl.registry import get_view
from freshet.sinks.settings import Settings

VIEW = get_view("card_txn")
VIEW_SCHEMA = load_schema(VIEW.source.schema_path)  # type: ignore[arg-type]
T0 = 1_714_521_600_000

# A newer producer: fields reordered, amount as float (promoted to the view's double), a field
# the view does not read, and documentation the view's schema does not have.
EVOLVED = {
    "type": "record",
    "name": "Transaction",
    "namespace": "freshet.demo",
    "doc": "v2",
    "fields": [
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "merchant", "type": "string"},
        {"name": "country", "type": "string"},
        {"name": "card_id", "type": "string"},
        {"name": "amount", "type": "float"},
    ],
}
# card_id as an int: cannot be read as the view's string.
INCOMPATIBLE = {
    "type": "record",
    "name": "Transaction",
    "namespace": "freshet.demo",
    "fields": [
        {"name": "card_id", "type": "long"},
        {"name": "amount", "type": "double"},
        {"name": "merchant", "type": "string"},
        {"name": "ts", "type": "long"},
    ],
}
SCHEMAS = {1: VIEW_SCHEMA, 2: EVOLVED, 3: INCOMPATIBLE}


class Registry:
    def __init__(self, url: str, requests: Counter[str], state: dict[str, int]) -> None:
        self.url = url
        self.requests = requests
        self.state = state  # "fail": how many next requests get a 503


@pytest.fixture
def registry() -> Iterator[Registry]:
    requests: Counter[str] = Counter()
    state = {"fail": 0}

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            requests[self.path] += 1
            if state["fail"] > 0:
                state["fail"] -= 1
                self.send_error(503)
                return
            prefix = "/schemas/ids/"
            schema_id = self.path[len(prefix) :]
            if not self.path.startswith(prefix) or not schema_id.isdigit():
                self.send_error(400)
                return
            schema = SCHEMAS.get(int(schema_id))
            if schema is None:
                body = b'{"error_code":40403,"message":"Schema not found"}'
                self.send_response(404)
            else:
                body = json.dumps({"schema": json.dumps(schema)}).encode()
                self.send_response(200)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with loopback_server(Handler) as url:
        yield Registry(url, requests, state)


def confluent(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(dict(schema)), record)
    return b"\x00" + schema_id.to_bytes(4, "big") + buf.getvalue()


def message(value: bytes, offset: int) -> RawMessage:
    return RawMessage(
        key=b"k", value=value, topic="transactions", partition=0, offset=offset,
        timestamp=(1, T0),
    )  # fmt: skip


def txn(i: int) -> dict[str, Any]:
    return {"card_id": f"c{i}", "amount": 1.5 + i, "merchant": f"m{i}", "ts": T0 + i}


def test_records_of_the_views_schema_and_of_an_evolved_one_decode_to_the_same_events(
    registry: Registry,
) -> None:
    decoder = decoder_for(VIEW, registry=SchemaRegistry(registry.url))
    records = [txn(i) for i in range(6)]
    messages = [
        message(confluent(1, VIEW_SCHEMA, r), i) if i % 2 else
        message(confluent(2, EVOLVED, {**r, "country": "NL"}), i)
        for i, r in enumerate(records)
    ]  # fmt: skip
    decoded = decoder.decode(messages)
    assert decoded.dead == []
    assert [(e[0], e[1], e[2], e[4]) for e in decoded.events] == [
        (r["card_id"], r["ts"], (r["amount"], r["merchant"]), i) for i, r in enumerate(records)
    ]
    # One GET per schema id, however many records use it.
    decoder.decode(messages)
    assert registry.requests == Counter({"/schemas/ids/1": 1, "/schemas/ids/2": 1})


def test_the_c_loop_takes_records_of_ids_resolved_to_the_views_schema(registry: Registry) -> None:
    """With a registry, records of an id resolved to the view's own schema are read by the C
    loop from the next batch on (and decode as the Python loop decodes them); other ids, and
    ids not yet resolved, go through the Python path."""
    fast = decoder_for(VIEW, registry=SchemaRegistry(registry.url))
    slow = decoder_for(VIEW, registry=SchemaRegistry(registry.url))
    slow._fast = None  # the Python loop only
    messages = [
        message(confluent(1, VIEW_SCHEMA, txn(0)), 0),
        message(confluent(2, EVOLVED, {**txn(1), "country": "NL"}), 1),
        message(confluent(1, VIEW_SCHEMA, txn(2))[:-1], 2),  # cut: dead-lettered either way
        message(confluent(9, VIEW_SCHEMA, txn(3)), 3),  # unknown id
    ]
    for _ in range(2):
        assert repr(fast.decode(messages)) == repr(slow.decode(messages))
    assert fast._own_ids == {1}
    calls: list[int] = []
    fast._decode_one = lambda m, dead: calls.append(m.offset()) or slow._decode_one(m, dead)  # type: ignore[method-assign]
    fast.decode(messages)
    assert calls == [1, 2, 3]  # id 1's good record stayed in C


def test_unknown_ids_and_unresolvable_schemas_are_dead_lettered_and_the_rest_decodes(
    registry: Registry,
) -> None:
    decoder = decoder_for(VIEW, registry=SchemaRegistry(registry.url))
    good = confluent(1, VIEW_SCHEMA, txn(0))
    unknown = confluent(9, VIEW_SCHEMA, txn(1))
    incompatible = confluent(3, INCOMPATIBLE, {**txn(2), "card_id": 7})
    not_confluent = b"\x07" + good[1:]
    decoded = decoder.decode(
        [message(v, i) for i, v in enumerate([unknown, good, incompatible, not_confluent])]
    )
    assert [e[0] for e in decoded.events] == ["c0"]
    letters = {letter.offset: letter for letter in decoded.dead}
    assert sorted(letters) == [0, 2, 3]
    assert all(letter.reason == "undecodable" for letter in letters.values())
    assert "schema id 9 is not in the schema registry" in letters[0].error
    assert letters[0].value == unknown  # the original bytes, for a replay once fixed
    assert "not Confluent wire format" in letters[3].error


def test_an_unreachable_registry_stops_decoding_instead_of_dead_lettering() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    waits: list[float] = []
    registry = SchemaRegistry(
        f"http://127.0.0.1:{port}", give_up_after_s=0.0, timeout_s=1.0, sleep=waits.append
    )
    decoder = decoder_for(VIEW, registry=registry)
    with pytest.raises(SchemaRegistryUnavailable, match=r"unreachable.*schema id 1"):
        decoder.decode([message(confluent(1, VIEW_SCHEMA, txn(0)), 0)])


def test_a_registry_answering_503_is_retried_with_backoff(registry: Registry) -> None:
    registry.state["fail"] = 2
    waits: list[float] = []
    client = SchemaRegistry(registry.url, backoff_initial_s=0.2, sleep=waits.append)
    assert client.schema(1) == VIEW_SCHEMA
    assert waits == [0.2, 0.4]
    assert registry.requests["/schemas/ids/1"] == 3


def test_registry_urls_and_answers_are_checked(registry: Registry) -> None:
    with pytest.raises(SchemaRegistryError, match="must start with http"):
        SchemaRegistry("localhost:8081")
    assert SchemaRegistry(registry.url + "/").schema(404) is None


def test_the_registry_url_comes_from_the_environment() -> None:
    url = "http://127.0.0.1:8081"
    assert Settings.from_env({"FRESHET_SCHEMA_REGISTRY_URL": url}).schema_registry_url == url
    assert Settings.from_env({}).schema_registry_url is None


def test_the_flows_decode_step_reads_the_confluent_format_when_a_registry_is_set(
    registry: Registry,
) -> None:
    from freshet.stream.pipeline import FlowOptions, _Decode

    options = FlowOptions(shards=4, schema_registry_url=registry.url)
    step = _Decode(VIEW, options.shards, options.schema_registry_url)
    value = confluent(2, EVOLVED, {**txn(3), "country": "NL"})
    (batch,) = step([message(value, 7)])
    assert batch.dead == []
    assert [(e[0], e[2]) for _, events in batch.groups for e in events] == [("c3", (4.5, "m3"))]
    # Without a registry the same bytes are not schemaless Avro of the view: dead-lettered.
    (plain,) = _Decode(VIEW, 4)([message(value, 7)])
    assert plain.groups == []
    assert len(plain.dead) == 1


def test_credentials_in_the_url_go_as_basic_auth_and_never_into_messages() -> None:
    seen: list[str | None] = []

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_error(503)

    with loopback_server(Handler) as url:
        port = url.rsplit(":", 1)[1]
        client = SchemaRegistry(
            f"http://svc:s%40cret@127.0.0.1:{port}", give_up_after_s=0.0, sleep=lambda _: None
        )
        assert client.url == url
        with pytest.raises(SchemaRegistryUnavailable) as caught:
            client.schema(1)
    assert seen == ["Basic c3ZjOnNAY3JldA=="]  # base64 of "svc:s@cret"
    assert "cret" not in str(caught.value)
