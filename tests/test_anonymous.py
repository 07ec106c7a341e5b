"""Sessions that belong to no user (a visitor's data before login), and the login that
carries their data over: the store on one server and on a cluster, then over HTTP on
both adapters."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from cached_sessions import (
    ANONYMOUS_ID,
    InvalidValueError,
    MissingParameterError,
    RedisSessions,
)
from tests.conftest import Deployment, ManualClock
from tests.cookies import set_cookies
from tests.servers import ServerProcess
from tests.test_store import Indexes
from tests.web_apps import MakeClient

pytest_plugins = ("tests.web_apps",)

APP = "shop"
IP = "10.0.0.1"
UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"


async def anonymous(rs: RedisSessions, d: dict[str, Any] | None = None, **options: Any) -> str:
    created = await rs.create_anonymous(app=APP, ip=IP, d=d or {"cart": [1, 2]}, **options)
    return created["token"]


async def user(rs: RedisSessions, id: str = "alice", **options: Any) -> str:
    return (await rs.create(app=APP, id=id, ip=IP, **options))["token"]


class Where(Indexes):
    """The index keys of the bucket a token lives in (an anonymous session's bucket is
    its token's), and its session key."""

    def __init__(self, rs: RedisSessions, token: str) -> None:
        super().__init__(rs, ANONYMOUS_ID, bucket=rs.layout.bucket_of_token(token))
        self.session = rs.layout.session(APP, token)


# The store


async def test_an_anonymous_session_is_stored_apart_from_every_user(
    rs: RedisSessions, redis: Redis, clock: ManualClock
) -> None:
    token = await anonymous(rs, {"next": "/cart"}, user_agent=UA)
    now = int(clock.now)
    where = Where(rs, token)
    assert await redis.hgetall(where.session) == {
        "id": ANONYMOUS_ID, "r": "1", "w": "1", "ip": IP, "la": str(now), "ttl": "1800",
        "ct": str(now), "ua": UA, "d": '{"next":"/cart"}',
    }  # fmt: skip
    # Where the wipe and killall look for it, and nowhere a user is listed.
    assert await redis.zrange(where.sessions, 0, -1) == [f"{token}:{ANONYMOUS_ID}"]
    assert await redis.zrange(where.expiry, 0, -1, withscores=True) == [
        (f"{APP}:{token}:{ANONYMOUS_ID}", now + 1800)
    ]
    assert await redis.zrange(where.users, 0, -1) == []
    session = await rs.get(app=APP, token=token)
    assert session is not None and session["d"] == {"next": "/cart"}
    assert await redis.zrange(where.users, 0, -1) == []  # a read adds no user either
    assert await rs.activity(app=APP, delta_time=600) == {"activity": 0}
    assert await rs.soapp(app=APP, delta_time=600) == {"sessions": []}


async def test_per_user_kills_never_reach_an_anonymous_session(rs: RedisSessions) -> None:
    token = await anonymous(rs)
    await user(rs, "alice")
    assert await rs.killsoid(app=APP, id="alice") == {"kill": 1}
    alice = await user(rs, "alice")
    assert await rs.kill_others(app=APP, id="alice", token=alice) == {"kill": 0}
    assert await rs.get(app=APP, token=token) is not None
    assert await rs.kill(app=APP, token=token) == {"kill": 1}
    assert await rs.get(app=APP, token=token) is None


async def test_killall_and_the_wipe_remove_anonymous_sessions(
    rs: RedisSessions, redis: Redis, clock: ManualClock
) -> None:
    first = await anonymous(rs)
    await user(rs, "alice")
    assert await rs.killall(app=APP) == {"kill": 2}
    assert await rs.get(app=APP, token=first) is None
    short = await anonymous(rs, ttl=10)
    longer = await anonymous(rs)
    clock.advance(11)
    assert await rs.wipe() == 1
    assert not await redis.exists(Where(rs, short).session)
    assert await rs.get(app=APP, token=longer) is not None


async def test_reads_served_from_the_cache_add_no_user(
    deployment: Deployment, redis: Redis, namespace: str, clock: ManualClock
) -> None:
    async with RedisSessions(
        url=deployment.url, namespace=namespace, wipe=0, cachetime=30, clock=clock, timer=clock
    ) as rs:
        token = await anonymous(rs)
        for _ in range(3):
            clock.advance(2)  # each read later than the last access Redis knows
            assert await rs.get(app=APP, token=token) is not None
        assert rs.is_cached(token, app=APP)
        assert await rs.flush_touches() == 1
        assert await redis.hget(Where(rs, token).session, "r") == "4"
        assert await redis.zrange(Where(rs, token).users, 0, -1) == []


async def test_anonymous_input_is_refused_before_any_io(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    with pytest.raises(MissingParameterError, match="holds data"):
        await rs.create_anonymous(app=APP, ip=IP, d={"gone": None})
    with pytest.raises(InvalidValueError, match="reserved"):
        await rs.create(app=APP, id=ANONYMOUS_ID, ip=IP)
    with pytest.raises(InvalidValueError, match="reserved"):
        await rs.killsoid(app=APP, id=ANONYMOUS_ID)
    assert await redis.keys(f"{namespace}:*") == []


# Login: upgrade


async def test_upgrade_keeps_an_anonymous_visitors_data_under_a_new_token(
    rs: RedisSessions, redis: Redis
) -> None:
    old = await anonymous(rs, {"cart": [1, 2], "lang": "fr", "next": "/pay"})
    upgraded = await rs.upgrade(
        app=APP, token=old, id="alice", ip=IP, d={"lang": "en", "next": None}, user_agent=UA
    )
    new, session = upgraded["token"], upgraded["session"]
    assert new != old
    assert session["id"] == "alice" and session["d"] == {"cart": [1, 2], "lang": "en"}
    assert await rs.get(app=APP, token=old) is None
    assert not await redis.exists(Where(rs, old).session)
    assert await redis.zrange(Where(rs, old).expiry, 0, -1) in (
        [],
        [f"{APP}:{new}:alice"],  # one bucket for both (always, off a cluster)
    )
    fetched = await rs.get(app=APP, token=new)
    assert fetched is not None and fetched["d"] == {"cart": [1, 2], "lang": "en"}
    assert [s["d"] for s in (await rs.soid(app=APP, id="alice"))["sessions"]] == [
        {"cart": [1, 2], "lang": "en"}
    ]
    assert await rs.activity(app=APP, delta_time=600) == {"activity": 1}


async def test_upgrade_without_keep_starts_from_its_own_keys(rs: RedisSessions) -> None:
    old = await anonymous(rs, {"cart": [1]})
    upgraded = await rs.upgrade(app=APP, token=old, id="alice", ip=IP, keep=False, d={"n": 1})
    assert upgraded["session"]["d"] == {"n": 1}
    assert await rs.get(app=APP, token=old) is None
    bare = await rs.upgrade(app=APP, token=None, id="bob", ip=IP)
    assert "d" not in bare["session"]


async def test_upgrade_never_carries_one_users_data_to_another(rs: RedisSessions) -> None:
    alice = await user(rs, "alice", d={"secret": "a"})
    bob = await rs.upgrade(app=APP, token=alice, id="bob", ip=IP)
    assert "d" not in bob["session"]
    assert await rs.get(app=APP, token=alice) is None
    again = await rs.upgrade(app=APP, token=bob["token"], id="bob", ip=IP, d={"x": 1})
    assert again["session"]["d"] == {"x": 1}
    same = await user(rs, "carol", d={"kept": True})
    relogin = await rs.upgrade(app=APP, token=same, id="carol", ip=IP)
    assert relogin["session"]["d"] == {"kept": True}
    assert len((await rs.soid(app=APP, id="carol"))["sessions"]) == 1


async def test_an_upgrade_that_fails_leaves_the_old_session_alone(
    rs: RedisSessions, redis: Redis, namespace: str
) -> None:
    old = await anonymous(rs, {"big": "x" * 40_000})
    before = await redis.hgetall(Where(rs, old).session)
    with pytest.raises(InvalidValueError, match="nothing was written"):
        await rs.upgrade(app=APP, token=old, id="alice", ip=IP, d={"more": "y" * 40_000})
    if not rs.layout.cluster:
        # One script: it wrote nothing, the old session is as it was.
        assert await redis.hgetall(Where(rs, old).session) == before
    assert await rs.soid(app=APP, id="alice") == {"sessions": []}


@pytest.fixture
def own_server() -> Iterator[ServerProcess]:
    """A server of this test's own, to pause without holding up other tests."""
    process = ServerProcess(os.environ.get("CACHED_SESSIONS_TEST_SERVER", "valkey"))
    process.start()
    yield process
    process.cleanup()


@pytest.mark.single_server
async def test_upgrade_is_one_step_a_client_that_gives_up_leaves_exactly_one_session(
    own_server: ServerProcess, namespace: str
) -> None:
    """The old login was create, read, kill: a failure after the create left two live
    sessions. Now the call either happened whole or not at all, whenever it fails."""
    redis = Redis.from_url(own_server.url, decode_responses=True)
    async with RedisSessions(
        url=own_server.url, namespace=namespace, wipe=0, redis_timeout=0.3
    ) as rs:
        old = await anonymous(rs, {"cart": [3]})
        await redis.execute_command("CLIENT", "PAUSE", 600, "WRITE")
        with pytest.raises(Exception, match="did not answer"):
            await rs.upgrade(app=APP, token=old, id="alice", ip=IP)
        await asyncio.sleep(0.8)  # the pause is over: whatever was queued has run
        members = await redis.zrange(rs.layout.app_sessions(APP), 0, -1)
        assert len(members) == 1
        token, _, id = members[0].partition(":")
        session = await rs.get(app=APP, token=token)
        assert session is not None and session["d"] == {"cart": [3]}
        assert (id == ANONYMOUS_ID and token == old) or (id == "alice" and token != old)
    await redis.aclose()


@pytest.mark.single_server
async def test_upgrade_publishes_both_invalidations(rs: RedisSessions, redis: Redis) -> None:
    old = await anonymous(rs)
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"{rs.layout.namespace}:cache")
    try:
        new = (await rs.upgrade(app=APP, token=old, id="alice", ip=IP))["token"]
        seen: set[str] = set()
        for _ in range(200):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is not None:
                seen.add(message["data"])
            if len(seen) == 2:
                break
        assert seen == {f"{APP}:{old}", f"{APP}:{new}"}
    finally:
        await pubsub.aclose()


# Over HTTP, on both adapters


async def count_sessions(client: Any) -> int:
    store = client.store
    layout = store.layout
    redis = store.redis
    total = 0
    for bucket in range(layout.buckets):
        total += await redis.zcard(layout.app_sessions(APP, bucket))
    return int(total)


def cookie_token(response: Any) -> str | None:
    morsel = set_cookies(response).get("sid")
    return None if morsel is None else str(morsel.value) or None


async def test_reads_create_nothing_and_the_first_write_creates_one_session(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    for _ in range(3):
        response = await client.get("/me")
        assert response.status == 200 and "sid" not in set_cookies(response)
    assert await count_sessions(client) == 0
    response = await client.post(
        "/put", data=json.dumps({"next": "/cart", "cart": [{"sku": "a1", "n": 2}]})
    )
    token = cookie_token(response)
    assert token is not None
    me = await (await client.get("/me", headers={"Cookie": f"sid={token}"})).json()
    assert me["user"] is None and me["is_new"] is False
    assert me["data"] == {"next": "/cart", "cart": [{"sku": "a1", "n": 2}]}
    assert await count_sessions(client) == 1
    session = await client.store.get(app=APP, token=token)
    assert session is not None and session["id"] == ANONYMOUS_ID and session["ttl"] == 1800


async def test_one_request_creates_at_most_one_session(make_client: MakeClient) -> None:
    client = await make_client(anonymous_ttl=60)
    response = await client.post("/save-twice")
    token = (await response.json())["token"]
    assert cookie_token(response) == token
    assert await count_sessions(client) == 1
    session = await client.store.get(app=APP, token=token)
    assert session is not None and session["d"] == {"first": 1, "second": 2}
    assert session["ttl"] == 60


async def test_login_keeps_the_visitors_data_and_the_old_token_is_dead(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    response = await client.post("/put", data=json.dumps({"next": "/cart", "lang": "fr"}))
    old = cookie_token(response)
    assert old is not None
    login = await client.post("/login", headers={"Cookie": f"sid={old}"})
    new = (await login.json())["token"]
    assert cookie_token(login) == new != old
    me = await (await client.get("/me", headers={"Cookie": f"sid={new}"})).json()
    assert me["user"] == "alice" and me["data"] == {"next": "/cart", "lang": "fr", "n": 0}
    # Fixation: the token known before the login is worth nothing after it.
    stale = await client.get("/me", headers={"Cookie": f"sid={old}"})
    assert (await stale.json())["data"] == {} and set_cookies(stale)["sid"].value == ""
    assert await count_sessions(client) == 1
    fresh = await client.post("/put", data=json.dumps({"cart": [1]}))
    empty = await client.post(
        "/login", params={"keep": "0"}, headers={"Cookie": f"sid={cookie_token(fresh)}"}
    )
    me = await (await client.get("/me", headers={"Cookie": f"sid={cookie_token(empty)}"})).json()
    assert me["data"] == {"n": 0}


async def test_a_csrf_token_rendered_before_the_first_write_still_verifies(
    make_client: MakeClient,
) -> None:
    client = await make_client(csrf=True)
    form = await client.get("/form")
    csrf_cookie = set_cookies(form)["csrf"].value
    csrf = (await form.json())["csrf"]
    headers = {
        "Cookie": f"csrf={csrf_cookie}",
        "X-CSRF-Token": csrf,
        "Origin": client_origin(client),
    }
    wrote = await client.post("/put", data=json.dumps({"next": "/x"}), headers=headers)
    assert wrote.status == 200
    token = cookie_token(wrote)
    assert token is not None
    headers["Cookie"] += f"; sid={token}"
    login = await client.post("/login", headers=headers)
    assert login.status == 200
    without = await client.post(
        "/put", data="{}", headers={"Cookie": f"sid={token}", "Origin": client_origin(client)}
    )
    assert without.status == 403


def client_origin(client: Any) -> str:
    return f"http://{client.host}:{client.port}"


async def test_flashes_survive_a_redirect_for_an_anonymous_visitor(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    response = await client.post(
        "/flash", params={"message": "Wrong password"}, allow_redirects=False
    )
    assert response.status in (302, 303)
    token = cookie_token(response)
    assert token is not None
    cookie = {"Cookie": f"sid={token}"}
    await client.post("/flash", params={"message": "Try again", "category": "error"},
                      headers=cookie, allow_redirects=False)  # fmt: skip
    shown = await (await client.get("/flashes", headers=cookie)).json()
    assert shown["flashes"] == [["info", "Wrong password"], ["error", "Try again"]]
    assert (await (await client.get("/flashes", headers=cookie)).json())["flashes"] == []


async def test_with_anonymous_data_off_nothing_is_ever_created(make_client: MakeClient) -> None:
    client = await make_client(anonymous_data=False)
    response = await client.post("/anonymous-write")
    assert response.status == 400 and "sid" not in set_cookies(response)
    assert await count_sessions(client) == 0


@pytest.mark.parametrize("path", ["/logout", "/logout-everywhere"])
async def test_an_anonymous_visitor_can_drop_its_data(make_client: MakeClient, path: str) -> None:
    client = await make_client()
    token = cookie_token(await client.post("/put", data=json.dumps({"cart": [1]})))
    assert token is not None
    response = await client.post(path, headers={"Cookie": f"sid={token}"}, allow_redirects=False)
    assert set_cookies(response)["sid"].value == ""
    assert await client.store.get(app=APP, token=token) is None
    assert await count_sessions(client) == 0
