"""The session middleware over real HTTP, on aiohttp's server and on uvicorn alike
(the shared app of tests/web_apps.py), against a real Redis or Redis Cluster."""

from __future__ import annotations

import asyncio
import gc
import json
import time

import pytest
from aiohttp import WSMsgType
from redis.asyncio import Redis

from cached_sessions import RedisSessions
from tests.conftest import Deployment
from tests.cookies import set_cookies
from tests.servers import free_port
from tests.web_apps import APP, Client, MakeClient, build_app, serve_app

pytest_plugins = ("tests.web_apps",)  # the shared fixtures: framework, make_client


async def login_as(client: Client, user: str = "alice") -> str:
    response = await client.post("/login", params={"user": user})
    assert response.status == 200
    token: str = (await response.json())["token"]
    return token


def with_token(token: str) -> dict[str, str]:
    return {"Cookie": f"sid={token}"}


# Logging in and out


async def test_login_sets_a_cookie_and_the_session_is_read_back(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.post("/login", params={"user": "alice"})
    cookie = set_cookies(response)["sid"]
    token = (await response.json())["token"]
    assert cookie.value == token and len(token) == 64
    me = await (await client.get("/me", headers=with_token(token))).json()
    assert (me["user"], me["data"], me["is_new"]) == ("alice", {"n": 0}, False)
    assert set(me["meta"]) == {"r", "w", "ttl", "idle", "ip"}


async def test_anonymous_request_has_no_user_and_no_cookie(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.get("/me")
    assert (await response.json())["is_new"] is True
    assert "Set-Cookie" not in response.headers


async def test_upgrade_always_issues_a_new_token_and_kills_the_old(make_client: MakeClient) -> None:
    client = await make_client()
    first = await login_as(client)
    response = await client.post("/login", params={"user": "alice"}, headers=with_token(first))
    second = (await response.json())["token"]
    assert second != first
    stale = await (await client.get("/me", headers=with_token(first))).json()
    assert stale["user"] is None


async def test_a_client_chosen_token_is_never_adopted(make_client: MakeClient) -> None:
    client = await make_client()
    chosen = "A" * 64
    response = await client.post("/login", headers=with_token(chosen))
    assert (await response.json())["token"] != chosen


async def test_logout_by_redirect_clears_the_cookie_on_the_same_response(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    token = await login_as(client)
    response = await client.post("/logout", headers=with_token(token), allow_redirects=False)
    assert response.status == 302
    cleared = set_cookies(response)["sid"]
    assert cleared.value == "" and cleared["max-age"] == "0"
    me = await (await client.get("/me", headers=with_token(token))).json()
    assert me["user"] is None


async def test_login_by_redirect_saves_and_sets_the_cookie(make_client: MakeClient) -> None:
    client = await make_client()
    response = await client.post("/login-redirect", allow_redirects=False)
    assert response.status == 302
    token = set_cookies(response)["sid"].value
    me = await (await client.get("/me", headers=with_token(token))).json()
    assert me["data"] == {"greeting": "welcome"}


async def test_log_out_everywhere_kills_every_session_of_the_user(make_client: MakeClient) -> None:
    client = await make_client()
    phone, laptop = await login_as(client, "bob"), await login_as(client, "bob")
    await client.post("/logout-everywhere", headers=with_token(phone))
    me = await (await client.get("/me", headers=with_token(laptop))).json()
    assert me["user"] is None


async def test_two_app_instances_share_sessions_and_logout(make_client: MakeClient) -> None:
    left, right = await make_client(), await make_client()
    token = await login_as(left, "carol")
    for _ in range(2):  # the second read is served from right's cache
        me = await (await right.get("/me", headers=with_token(token))).json()
        assert me["user"] == "carol"
    await left.post("/logout", headers=with_token(token), allow_redirects=False)
    started = time.monotonic()
    while time.monotonic() - started < 5:  # it comes at once; a loaded machine is slow
        me = await (await right.get("/me", headers=with_token(token))).json()
        if me["user"] is None:
            break
        await asyncio.sleep(0.002)
    assert me["user"] is None


# Data


async def test_only_changed_keys_are_written_so_concurrent_requests_both_keep_theirs(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    token = await login_as(client)
    await asyncio.gather(
        *(client.post("/put", json={f"k{i}": i}, headers=with_token(token)) for i in range(20))
    )
    me = await (await client.get("/me", headers=with_token(token))).json()
    assert me["data"] == {"n": 0, **{f"k{i}": i for i in range(20)}}


async def test_delete_removes_the_key_from_redis(make_client: MakeClient) -> None:
    client = await make_client()
    token = await login_as(client)
    await client.post("/put", json={"a": 1, "b": 2}, headers=with_token(token))
    await client.post("/put", json={"a": None}, headers=with_token(token))
    me = await (await client.get("/me", headers=with_token(token))).json()
    assert me["data"] == {"n": 0, "b": 2}


async def test_an_unchanged_session_costs_no_write(
    make_client: MakeClient, redis: Redis, namespace: str
) -> None:
    client = await make_client()
    token = await login_as(client)
    key = client.store.layout.session(APP, token)
    before = await redis.hget(key, "w")
    for _ in range(3):
        await client.get("/me", headers=with_token(token))
    assert await redis.hget(key, "w") == before


async def test_a_bad_value_fails_at_the_assignment(make_client: MakeClient) -> None:
    client = await make_client()
    token = await login_as(client)
    response = await client.post("/bad-value", headers=with_token(token))
    assert response.status == 400
    assert "d.bad[1] is outside the integers" in (await response.json())["error"]


async def test_with_anonymous_data_off_an_anonymous_session_refuses_data(
    make_client: MakeClient,
) -> None:
    client = await make_client(anonymous_data=False)
    response = await client.post("/anonymous-write")
    assert response.status == 400
    assert "upgrade" in (await response.json())["error"]


@pytest.mark.parametrize(("path", "key"), [("/stream", "streamed"), ("/file", "filed")])
async def test_streamed_and_file_responses_save_before_headers(
    make_client: MakeClient, path: str, key: str
) -> None:
    client = await make_client()
    token = await login_as(client)
    response = await client.get(path, headers=with_token(token))
    assert response.status == 200
    await response.read()
    me = await (await client.get("/me", headers=with_token(token))).json()
    assert me["data"][key] is True


async def test_websocket_responses_save_before_the_upgrade(make_client: MakeClient) -> None:
    client = await make_client()
    token = await login_as(client, "dave")
    async with client.ws_connect("/socket", headers=with_token(token)) as ws:
        message = await ws.receive()
        assert (message.type, message.data) == (WSMsgType.TEXT, "dave")
    me = await (await client.get("/me", headers=with_token(token))).json()
    assert me["data"]["socket"] is True


async def test_store_helpers_from_a_handler(make_client: MakeClient) -> None:
    client = await make_client()
    await login_as(client, "bob")
    token = await login_as(client, "alice")
    figures = await (await client.get("/others", headers=with_token(token))).json()
    assert figures.pop("store") == id(client.store)  # get_store gives the app's store
    assert figures == {"mine": 1, "active": 2, "recent": 2, "killed": 1}


async def test_a_handler_that_fails_after_a_login_still_sends_the_new_cookie(
    make_client: MakeClient,
) -> None:
    """The 500 still carries the new session's cookie: the login already killed the old
    session, so losing the cookie would log the user out."""
    client = await make_client()
    old = await login_as(client)
    response = await client.post("/fail", headers=with_token(old))
    assert response.status == 500
    token = set_cookies(response)["sid"].value
    me = await (await client.get("/me", headers=with_token(token))).json()
    assert (me["user"], me["data"]) == ("mallory", {"n": 1})


# Tokens and cookies


async def test_cookie_attributes_default_to_safe_values(make_client: MakeClient) -> None:
    client = await make_client(secure=True)
    response = await client.post("/login")
    cookie = set_cookies(response)["__Host-sid"]
    assert cookie["httponly"] is True
    assert cookie["secure"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == "" and cookie["expires"] == ""  # a browser-session cookie


async def test_max_age_sets_max_age_and_expires(make_client: MakeClient) -> None:
    client = await make_client(max_age=3600, domain="example.test", path="/app", samesite="Strict")
    cookie = set_cookies(await client.post("/login"))["sid"]
    assert cookie["max-age"] == "3600"
    assert cookie["expires"].endswith("GMT")
    assert (cookie["domain"], cookie["path"], cookie["samesite"]) == (
        "example.test",
        "/app",
        "Strict",
    )


@pytest.mark.parametrize(
    "value",
    ["", "short", "A" * 64, "A" * 63 + "!", "x" * 5000, "\u00e9" * 64, "A" * 64 + ".sig"],
)
async def test_unknown_or_malformed_tokens_give_anonymous_and_clear_the_cookie(
    make_client: MakeClient, value: str
) -> None:
    client = await make_client()
    response = await client.get("/me", headers={"Cookie": f"sid={value}"})
    assert response.status == 200
    assert (await response.json())["user"] is None
    if value:
        assert set_cookies(response)["sid"]["max-age"] == "0"


async def test_bearer_tokens_work_for_api_clients(make_client: MakeClient) -> None:
    client = await make_client()
    token = await login_as(client, "api")
    me = await (await client.get("/me", headers={"Authorization": f"Bearer {token}"})).json()
    assert me["user"] == "api"
    off = await make_client(bearer=False)
    me = await (await off.get("/me", headers={"Authorization": f"Bearer {token}"})).json()
    assert me["user"] is None


SECRET_OLD = "pG4tW9zL-an-older-test-secret-7cVx2QmR"
SECRET_NEW = "Hk3sN8yB-the-newer-test-secret-5jDf1XaE"


async def test_signed_cookies_verify_rotate_and_refuse_forgeries(make_client: MakeClient) -> None:
    old = await make_client(secrets=[SECRET_OLD])
    signed_old = set_cookies(await old.post("/login", params={"user": "eve"}))["sid"].value
    token, _, mac = signed_old.partition(".")
    assert len(token) == 64 and mac

    rotated = await make_client(secrets=[SECRET_NEW, SECRET_OLD])
    response = await rotated.get("/me", headers={"Cookie": f"sid={signed_old}"})
    assert (await response.json())["user"] == "eve"
    resigned = set_cookies(response)["sid"].value
    assert resigned.startswith(token + ".") and resigned != signed_old
    response = await rotated.get("/me", headers={"Cookie": f"sid={resigned}"})
    assert (await response.json())["user"] == "eve" and "Set-Cookie" not in response.headers

    # The store's own counters, not the server's: other tests' processes may be busy.
    store = rotated.store
    reads = ("hits", "misses", "bypassed", "coalesced")
    before = [store.cache_stats()[key] for key in reads]
    other_last = "B" if mac.endswith("A") else "A"  # one in 16 MACs ends with an A
    for forged in (
        token,
        f"{token}.{mac[:-1]}{other_last}",
        f"{'B' * 64}.{mac}",
        f"{token}.{mac}x",
    ):
        response = await rotated.get("/me", headers={"Cookie": f"sid={forged}"})
        assert (await response.json())["user"] is None
        assert set_cookies(response)["sid"]["max-age"] == "0"
    after = [store.cache_stats()[key] for key in reads]
    assert after == before, "a forged cookie must never reach the store (nor Redis)"


def test_secrets_never_show_in_a_repr() -> None:
    from aiohttp_ext import TokenSigner

    signer = TokenSigner([SECRET_NEW])
    assert SECRET_NEW not in repr(signer)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenSigner(["short"])


async def test_multi_tenant_app_names(make_client: MakeClient) -> None:
    client = await make_client(app_name=lambda request: request.headers.get("X-Tenant", "default"))
    response = await client.post("/login", headers={"X-Tenant": "tenant-a"})
    token = (await response.json())["token"]
    mine = await (
        await client.get("/me", headers={**with_token(token), "X-Tenant": "tenant-a"})
    ).json()
    theirs = await (
        await client.get("/me", headers={**with_token(token), "X-Tenant": "tenant-b"})
    ).json()
    assert (mine["user"], theirs["user"]) == ("alice", None)


# The store's lifetime


async def test_the_store_starts_and_closes_with_the_app(
    framework: str, deployment: Deployment, namespace: str
) -> None:
    """aiohttp's startup and cleanup signals, an ASGI server's lifespan events."""
    store = RedisSessions(url=deployment.url, namespace=namespace, wipe=0, cachetime=30)
    assert not store.cache_stats()["subscribed"]
    async with serve_app(build_app(framework, store, []), free_port()):
        assert store.cache_stats()["subscribed"]
        assert not store._closed
    assert store._closed
    assert json.dumps(store.cache_stats())


# Memory


def _ours() -> dict[int, str]:
    """The request-scoped objects of the session layer that are alive, by id (holding
    them would keep them alive)."""
    from aiohttp_ext.middleware import RequestState as AiohttpState
    from asgi_ext.middleware import RequestState as AsgiState
    from cached_sessions.web import Exchange, Session

    kinds = AiohttpState | AsgiState | Exchange | Session
    return {id(o): type(o).__name__ for o in gc.get_objects() if isinstance(o, kinds)}


async def test_requests_leave_no_reference_cycles_for_the_garbage_collector(
    make_client: MakeClient,
) -> None:
    """A request's session objects are freed by reference counting alone, as soon as
    aiohttp drops the request: with the collector off, a collection finds none of them.

    A cycle (a session linked back to its request, say) would leave every request to
    the cyclic GC, whose full collections stall the event loop under load. A raised
    HTTPException (a redirect) is left out: aiohttp keeps the exception in a frame of
    its traceback, a cycle of aiohttp's own that holds every frame below it.
    """
    client = await make_client()
    token = await login_as(client)
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            await client.get("/me", headers=with_token(token))  # a cache hit
            await client.get("/me")  # anonymous
            await client.post("/put", json={"n": 1}, headers=with_token(token))  # a save
            await client.get("/stream", headers=with_token(token))  # prepared in the handler
            await client.post("/login", params={"user": "bob"})  # a login
        alive = _ours()
        gc.collect()
        freed_by_the_collector = sorted(v for k, v in alive.items() if k not in _ours())
    finally:
        gc.enable()
    assert len(alive) < 5 * 3  # most were freed at once, as each request ended
    assert freed_by_the_collector == []
