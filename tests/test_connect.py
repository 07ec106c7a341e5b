"""URLs: which client each form makes, and clear errors for malformed ones."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from cached_sessions import ClusterLayout, KeyLayout, RedisSessions
from cached_sessions.connect import connect, redacted_url


async def test_each_scheme_makes_its_client() -> None:
    plain = connect("redis://127.0.0.1:6379/2", connect_timeout=1)
    assert isinstance(plain, Redis) and plain.connection_pool.connection_kwargs["db"] == 2
    cluster = connect("redis+cluster://127.0.0.1:7000", connect_timeout=1)
    assert isinstance(cluster, RedisCluster)
    primary = connect(
        "redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/main/3", connect_timeout=1
    )
    assert isinstance(primary, Redis)
    pool = primary.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert (pool.service_name, pool.connection_kwargs["db"]) == ("main", 3)
    assert pool.connection_kwargs["password"] == "pw"
    assert [
        s.connection_pool.connection_kwargs["port"] for s in pool.sentinel_manager.sentinels
    ] == [
        26379,
        26380,
    ]
    for client in (plain, primary):
        await client.aclose()
    await cluster.aclose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel:///main", "at least one sentinel"),
        ("redis+sentinel://127.0.0.1:26379", "ends in /<service name>"),
        ("redis+sentinel://127.0.0.1:26379/main/x", "ends in /<service name>"),
        ("redis+sentinel://127.0.0.1:99999/main", "bad port"),
    ],
)
def test_a_malformed_sentinel_url_says_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        connect(url, connect_timeout=1)


def test_the_layout_follows_the_url() -> None:
    assert isinstance(RedisSessions(url="redis+cluster://127.0.0.1:7000").layout, ClusterLayout)
    assert isinstance(RedisSessions(url="redis://127.0.0.1:6379").layout, KeyLayout)
    assert RedisSessions(url="rediss+cluster://h:1", buckets=16).layout.buckets == 16


def test_every_form_is_redacted_whole() -> None:
    url = "redis+sentinel://user:s3cret@h1:26379,[::1]:26380/main?sentinel_password=s3cret"
    assert redacted_url(url) == "redis+sentinel://***@h1:26379,[::1]:26380/main?***"
