"""API keys: the FRESHET_API_KEYS format, scopes, and keys never leaking into messages."""

from __future__ import annotations

import pytest

from freshet.serving.auth import ApiKeys, Forbidden, Unauthorized, presented_key

KEYS = ApiKeys.parse("k_card:card_txn, card_txn_json ; k_all:*")


def test_unset_keys_disable_authentication() -> None:
    keys = ApiKeys.parse("")
    assert not keys.enabled
    keys.check(None, "card_txn")  # no error


def test_a_scoped_key_reads_its_views_only() -> None:
    KEYS.check(b"k_card", "card_txn")
    KEYS.check(b"k_card", "card_txn_json")
    with pytest.raises(Forbidden, match="may not read view 'other'"):
        KEYS.check(b"k_card", "other")


def test_a_star_key_reads_every_view() -> None:
    KEYS.check(b"k_all", "anything")


def test_missing_and_wrong_keys_are_unauthorized() -> None:
    with pytest.raises(Unauthorized, match="missing API key"):
        KEYS.check(None, "card_txn")
    with pytest.raises(Unauthorized, match="invalid API key"):
        KEYS.check(b"k_car", "card_txn")  # a prefix of a real key is no key


def test_any_valid_key_may_list_views() -> None:
    KEYS.check(b"k_card", None)


@pytest.mark.parametrize("text", ["secret123", "secret123:", ":card_txn", "secret123: , "])
def test_malformed_entries_are_rejected_without_echoing_the_key(text: str) -> None:
    with pytest.raises(ValueError, match="entry 1") as info:
        ApiKeys.parse(text)
    assert "secret123" not in str(info.value)


def test_keys_do_not_appear_in_reprs() -> None:
    assert "k_card" not in repr(KEYS)
    assert "k_all" not in repr(KEYS.keys)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"authorization", b"Bearer k1")], b"k1"),
        ([(b"Authorization", b"bearer  k1 ")], b"k1"),
        ([(b"x-api-key", b"k2")], b"k2"),
        ([(b"authorization", b"Basic abc")], b""),  # present but no bearer token: invalid
        ([], None),
    ],
)
def test_the_key_comes_from_a_bearer_token_or_x_api_key(
    headers: list[tuple[bytes, bytes]], expected: bytes | None
) -> None:
    assert presented_key(headers) == expected


def test_keys_in_two_headers_are_refused_rather_than_picking_one() -> None:
    with pytest.raises(Unauthorized, match="send the API key once"):
        presented_key([(b"authorization", b"Bearer k_all"), (b"x-api-key", b"junk")])
