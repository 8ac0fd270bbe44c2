"""``?cluster=true`` in FRESHET_REDIS_URL: parsed strictly, removed before redis-py sees it."""

from __future__ import annotations

import pytest
import redis
import redis.cluster

from freshet.sinks.redis_store import connect, is_cluster_url, split_cluster_url


@pytest.mark.parametrize(
    ("url", "plain", "cluster"),
    [
        ("redis://h:6379/0", "redis://h:6379/0", False),
        ("redis://h:6379/0?cluster=true", "redis://h:6379/0", True),
        ("rediss://u:p@h/0?cluster=yes&ssl_cert_reqs=none", "rediss://u:p@h/0?ssl_cert_reqs=none",
         True),
        ("redis://h:6379/0?cluster=0", "redis://h:6379/0", False),
        ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock?db=2", False),
    ],
)  # fmt: skip
def test_the_cluster_flag_is_split_off_the_url(url: str, plain: str, cluster: bool) -> None:
    assert split_cluster_url(url) == (plain, cluster)
    assert is_cluster_url(url) is cluster


def test_a_cluster_flag_that_is_not_a_boolean_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"cluster='maybe' is not a boolean"):
        split_cluster_url("redis://h:6379/0?cluster=maybe")


def test_a_plain_url_gives_a_lazy_single_server_client() -> None:
    client = connect("redis://127.0.0.1:1/3?cluster=false")  # nothing listens: lazy, no error
    assert isinstance(client, redis.Redis)
    assert client.connection_pool.connection_kwargs["db"] == 3
    client.close()


def test_a_cluster_url_builds_a_cluster_client_that_fails_fast_when_no_node_answers() -> None:
    with pytest.raises(redis.exceptions.RedisClusterException):
        connect("redis://127.0.0.1:1/0?cluster=true")
