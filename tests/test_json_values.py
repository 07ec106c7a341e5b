"""Lists and objects in `d`: checked before any I/O, merged per top-level key as text,
so every value's JSON text stays as it was; the cache hands out copies. The store on
one server and on a cluster, then over HTTP on both adapters."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis.asyncio import Redis

from cached_sessions import InvalidValueError, RedisSessions
from cached_sessions.model import MAX_DATA_DEPTH
from cached_sessions.validation import MAX_DATA_BYTES, MAX_SAFE_INTEGER
from tests.conftest import Deployment
from tests.web_apps import MakeClient

pytest_plugins = ("tests.web_apps",)

APP = "shop"
IP = "10.0.0.1"
CART = [{"sku": "a-1", "qty": 2, "price": 9.95}, {"sku": "b-2", "qty": 1, "tags": []}]


async def new(rs: RedisSessions, d: dict[str, Any] | None = None) -> str:
    return (await rs.create(app=APP, id="alice", ip=IP, d=d))["token"]


def nested(levels: int) -> Any:
    """A value of `levels` levels of lists (in `d`, one level more)."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


async def test_lists_and_objects_round_trip_and_merge_per_top_level_key(
    rs: RedisSessions,
) -> None:
    token = await new(rs, {"cart": CART, "roles": ["admin"], "n": 1})
    await rs.set(app=APP, token=token, d={"oauth": {"state": "s1", "scopes": ["a", "b"]}})
    merged = await rs.set(app=APP, token=token, d={"roles": None, "cart": CART[:1]})
    assert merged is not None
    expected = {"cart": CART[:1], "n": 1, "oauth": {"state": "s1", "scopes": ["a", "b"]}}
    assert merged["d"] == expected
    session = await rs.get(app=APP, token=token)
    assert session is not None and session["d"] == expected


async def test_the_merge_leaves_every_values_text_as_it_was(
    rs: RedisSessions, redis: Redis
) -> None:
    """Written by another client, with text Python would write otherwise (spaces,
    1.10, 1e2, exact big integers, brackets and escapes inside strings)."""
    token = await new(rs)
    key = rs.layout.session(APP, token)
    members = [
        '"big":[9007199254740991, -9007199254740991]',
        '"odd" : { "price": 1.10, "exp": 1e2, "s": "a]}{[\\"b" }',
        '"deep":[[{"}":"]"},[]],{"x":[{"y":"[["}]}]',
        '"plain":"v"',
    ]
    await redis.hset(key, "d", "{" + ", ".join(members) + "}")
    await rs.set(app=APP, token=token, d={"plain": None, "added": {"k": [1]}})
    stored = await redis.hget(key, "d")
    for member in members[:3]:
        assert member in stored
    assert json.loads(stored)["added"] == {"k": [1]} and "plain" not in json.loads(stored)


async def test_brackets_in_strings_of_nested_values_are_written_as_escapes(
    rs: RedisSessions, redis: Redis
) -> None:
    """So that the merge finds where each value ends in one step (no Lua per string);
    every reader gets the same strings back. Top-level strings stay as they are (their
    text is what references index)."""
    value = {"q": "a[1]", "list": ["}{", {"k]": "x"}]}
    token = await new(rs, {"v": value, "s": "[top]"})
    stored = await redis.hget(rs.layout.session(APP, token), "d")
    assert stored == (
        '{"v":{"q":"a\\u005b1\\u005d","list":["\\u007d\\u007b",{"k\\u005d":"x"}]},"s":"[top]"}'
    )
    session = await rs.get(app=APP, token=token)
    assert session is not None and session["d"] == {"v": value, "s": "[top]"}


async def test_values_nested_up_to_the_bound_are_taken(rs: RedisSessions) -> None:
    token = await new(rs, {"deep": nested(MAX_DATA_DEPTH - 1)})
    session = await rs.get(app=APP, token=token)
    assert session is not None and session["d"]["deep"] == nested(MAX_DATA_DEPTH - 1)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": [1, {"b": MAX_SAFE_INTEGER + 1}]}, r"d\.v\.a\[1\]\.b is outside the integers"),
        ([-(2**60)], r"d\.v\[0\] is outside the integers"),
        ([float("nan")], r"d\.v\[0\] must be a finite number"),
        (nested(MAX_DATA_DEPTH), "nests deeper than 16 levels"),
        ({"a": {1: "x"}}, r"d\.v\.a has a key of type int"),
        ([(1, 2)], r"d\.v\[0\] has a forbidden type"),
        (["x" * MAX_DATA_BYTES], "bytes as JSON"),
    ],
)
async def test_bad_values_are_refused_before_any_io(
    rs: RedisSessions, redis: Redis, namespace: str, value: Any, message: str
) -> None:
    with pytest.raises(InvalidValueError, match=message):
        await rs.create(app=APP, id="alice", ip=IP, d={"v": value})
    with pytest.raises(InvalidValueError, match=message):
        await rs.set(app=APP, token="t" * 64, d={"v": value})
    assert await redis.keys(f"{namespace}:*") == []


async def test_a_cycle_is_refused_not_followed(rs: RedisSessions) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidValueError, match="nests deeper"):
        await rs.set(app=APP, token="t" * 64, d={"loop": loop})


async def test_a_value_changed_in_place_never_reaches_the_cache(
    deployment: Deployment, namespace: str
) -> None:
    async with RedisSessions(url=deployment.url, namespace=namespace, wipe=0, cachetime=30) as rs:
        token = await new(rs, {"cart": [{"sku": "a"}], "flat": 1})
        first = await rs.get(app=APP, token=token)  # the fill
        assert first is not None
        first["d"]["cart"][0]["sku"] = "changed by the caller"
        first["d"]["cart"].append("more")
        for _ in range(2):
            hit = rs.cached(app=APP, token=token)
            assert hit is not None and hit["d"]["cart"] == [{"sku": "a"}]
            hit["d"]["cart"].clear()


# Over HTTP, on both adapters


async def test_json_values_through_a_request(make_client: MakeClient) -> None:
    client = await make_client()
    login = await client.post("/login", params={"org": json.dumps({"id": 7, "units": [1, 2]})})
    token = (await login.json())["token"]
    cookie = {"Cookie": f"sid={token}"}
    await client.post("/put", data=json.dumps({"cart": CART}), headers=cookie)
    me = await (await client.get("/me", headers=cookie)).json()
    assert me["data"] == {"n": 0, "org": {"id": 7, "units": [1, 2]}, "cart": CART}
