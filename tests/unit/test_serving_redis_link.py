"""The endpoint's Redis link: what it takes from FRESHET_REDIS_URL, and never shows a password."""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions

from freshet.serving.redis_link import RedisLink


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "RedisLink(redis://127.0.0.1:6379/0)"),
        ("redis://:s3cret@cache.internal:6380/4", "RedisLink(redis://cache.internal:6380/4)"),
        ("rediss://user:s3cret@cache.internal/2", "RedisLink(rediss://cache.internal:6379/2)"),
        ("unix:///run/redis.sock?db=3", "RedisLink(unix:///run/redis.sock/3)"),
    ],
)
def test_urls_are_understood_and_passwords_never_shown(url: str, shown: str) -> None:
    assert repr(RedisLink(url)) == shown


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379", "unsupported Redis URL scheme 'http'"),
        ("redis://127.0.0.1:6379/zero", "database 'zero' is not a number"),
    ],
)
def test_bad_urls_are_rejected_naming_the_bad_part(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisLink(url)


def test_an_unreachable_redis_is_a_connection_error_naming_the_address() -> None:
    link = RedisLink("unix:///nonexistent/freshet-test.sock", socket_connect_timeout=0.5)
    with pytest.raises(redis.exceptions.ConnectionError, match=r"nonexistent/freshet-test\.sock"):
        asyncio.run(link.mget([b"k"]))
