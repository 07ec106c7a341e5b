"""A user's sessions as devices: listed with opaque handles, revoked one by one, all
others ended in one script. The store on one server and on a cluster, then over HTTP
on both adapters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cached_sessions import InvalidFormatError, RedisSessions
from cached_sessions.validation import MAX_USER_AGENT_LENGTH
from cached_sessions.web.exchange import client_user_agent
from tests.conftest import Deployment, ManualClock
from tests.cookies import set_cookies
from tests.web_apps import MakeClient

pytest_plugins = ("tests.web_apps",)

APP = "shop"
IP = "10.0.0.1"
PHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) Mobile/15E148"
LAPTOP = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"


async def login(rs: RedisSessions, id: str = "alice", **options: Any) -> str:
    return (await rs.create(app=APP, id=id, **{"ip": IP, **options}))["token"]


async def test_devices_list_each_live_session_with_an_opaque_handle(
    rs: RedisSessions, clock: ManualClock
) -> None:
    created = int(clock.now)
    phone = await login(rs, user_agent=PHONE)
    clock.advance(5)
    laptop = await login(rs, user_agent=LAPTOP, ip="2001:db8::7")
    await login(rs, "bob")
    clock.advance(3)
    await rs.get(app=APP, token=phone)
    devices = await rs.devices(app=APP, id="alice", current=laptop)
    assert [(d["user_agent"], d["current"]) for d in devices] == [(PHONE, False), (LAPTOP, True)]
    first, second = devices
    assert first["created"] == created and first["last_active"] == created + 8
    assert first["idle"] == 0 and first["ip"] == IP
    assert second["created"] == created + 5 and second["ip"] == "2001:db8::7"
    assert second["idle"] == 3
    handles = {d["handle"] for d in devices}
    assert len(handles) == 2 and not handles & {phone, laptop}
    for handle in handles:
        assert len(handle) == 32 and handle not in phone + laptop
        with pytest.raises(InvalidFormatError):
            await rs.get(app=APP, token=handle)  # a handle is no token
    # Listing is not activity.
    assert (await rs.devices(app=APP, id="alice"))[1]["idle"] == 3


async def test_revoke_ends_one_device_and_only_its_own_users(rs: RedisSessions) -> None:
    phone, laptop = await login(rs), await login(rs)
    bob = await login(rs, "bob")
    (bobs,) = await rs.devices(app=APP, id="bob")
    # Another user's handle names none of alice's sessions: nothing ends.
    assert await rs.revoke(app=APP, id="alice", handle=bobs["handle"]) == {"kill": 0}
    assert await rs.get(app=APP, token=bob) is not None
    mine = await rs.devices(app=APP, id="alice", current=laptop)
    phone_handle = next(d["handle"] for d in mine if not d["current"])
    assert await rs.revoke(app=APP, id="bob", handle=phone_handle) == {"kill": 0}
    assert await rs.get(app=APP, token=phone) is not None
    assert await rs.revoke(app=APP, id="alice", handle=phone_handle) == {"kill": 1}
    assert await rs.get(app=APP, token=phone) is None
    assert await rs.get(app=APP, token=laptop) is not None
    assert await rs.revoke(app=APP, id="alice", handle=phone_handle) == {"kill": 0}
    with pytest.raises(InvalidFormatError, match="handle"):
        await rs.revoke(app=APP, id="alice", handle=phone)  # a token is no handle


async def test_kill_others_keeps_one_session_and_ends_the_rest_of_the_user(
    rs: RedisSessions,
) -> None:
    keep = await login(rs)
    others = [await login(rs) for _ in range(3)]
    bob = await login(rs, "bob")
    assert await rs.kill_others(app=APP, id="alice", token=keep) == {"kill": 3}
    for token in others:
        assert await rs.get(app=APP, token=token) is None
    assert await rs.get(app=APP, token=keep) is not None
    assert await rs.get(app=APP, token=bob) is not None
    assert [d["current"] for d in await rs.devices(app=APP, id="alice", current=keep)] == [True]
    assert await rs.activity(app=APP, delta_time=600) == {"activity": 2}


async def test_kill_others_drops_what_this_process_caches_but_the_one_kept(
    deployment: Deployment, namespace: str
) -> None:
    async with RedisSessions(url=deployment.url, namespace=namespace, wipe=0, cachetime=30) as rs:
        keep, other = await login(rs), await login(rs)
        for token in (keep, other):
            await rs.get(app=APP, token=token)
            assert rs.is_cached(token, app=APP)
        await rs.kill_others(app=APP, id="alice", token=keep)
        assert not rs.is_cached(other, app=APP) and rs.is_cached(keep, app=APP)
        assert await rs.get(app=APP, token=other) is None


# Over HTTP, on both adapters


def test_a_clients_user_agent_is_recorded_printable_and_bounded() -> None:
    assert client_user_agent(None) == ""
    assert client_user_agent("curl/8\x00\x1b[31m\u2028") == "curl/8[31m"
    assert client_user_agent("é" * 300) == "é" * MAX_USER_AGENT_LENGTH
    assert client_user_agent("a\udcff\ud800b") == "ab"


async def sign_in(client: Any, user: str, agent: str) -> str:
    response = await client.post("/login", params={"user": user}, headers={"User-Agent": agent})
    token: str = (await response.json())["token"]
    return token


def as_(token: str) -> dict[str, str]:
    return {"Cookie": f"sid={token}"}


async def test_a_user_sees_their_devices_and_logs_one_out(make_client: MakeClient) -> None:
    client = await make_client()
    phone = await sign_in(client, "alice", PHONE)
    laptop = await sign_in(client, "alice", LAPTOP + "x" * 400)
    mallory = await sign_in(client, "mallory", LAPTOP)
    listed = (await (await client.get("/devices", headers=as_(laptop))).json())["devices"]
    by_current = {d["current"]: d for d in listed}
    assert len(listed) == 2 and by_current[False]["user_agent"] == PHONE
    # What a client sends is kept bounded, never refused.
    assert by_current[True]["user_agent"] == (LAPTOP + "x" * 400)[:256]
    assert all(phone not in str(d) and laptop not in str(d) for d in listed)
    phone_handle = by_current[False]["handle"]
    # Mallory's request with alice's handle ends nothing.
    stolen = await client.post("/revoke", params={"handle": phone_handle}, headers=as_(mallory))
    assert (await stolen.json()) == {"revoked": False, "me": "mallory"}
    assert await client.store.get(app="shop", token=phone) is not None
    revoked = await client.post("/revoke", params={"handle": phone_handle}, headers=as_(laptop))
    assert (await revoked.json()) == {"revoked": True, "me": "alice"}
    assert await client.store.get(app="shop", token=phone) is None
    me = await (await client.get("/me", headers=as_(laptop))).json()
    assert me["user"] == "alice"


async def test_revoking_this_devices_own_handle_is_a_logout(make_client: MakeClient) -> None:
    client = await make_client()
    token = await sign_in(client, "alice", PHONE)
    (mine,) = (await (await client.get("/devices", headers=as_(token))).json())["devices"]
    response = await client.post("/revoke", params={"handle": mine["handle"]}, headers=as_(token))
    assert (await response.json()) == {"revoked": True, "me": None}
    assert set_cookies(response)["sid"].value == ""


async def test_log_out_my_other_devices(make_client: MakeClient) -> None:
    client = await make_client()
    tokens = [await sign_in(client, "alice", agent) for agent in (PHONE, LAPTOP, "curl/8")]
    bob = await sign_in(client, "bob", PHONE)
    response = await client.post("/destroy-others", headers=as_(tokens[1]))
    assert (await response.json()) == {"killed": 2}
    states = await asyncio.gather(
        *(client.store.get(app="shop", token=token) for token in [*tokens, bob])
    )
    assert [state is not None for state in states] == [False, True, False, True]
    anonymous = await client.post("/destroy-others")
    assert (await anonymous.json()) == {"killed": 0}
