"""Every error the library raises derives from `SessionsError`; input errors are
`ValueError`s too, and the errors that mean "Redis failed" are redis-py's as well."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.requests import Request

import aiohttp_ext
import asgi_ext
from aiohttp_ext import setup_sessions
from asgi_ext import SessionMiddleware
from cached_sessions import (
    ConfigurationError,
    IncompleteKillError,
    InvalidFormatError,
    InvalidInputError,
    InvalidValueError,
    MissingParameterError,
    NotDurableError,
    RedisSessions,
    SessionsClosedError,
    SessionsError,
    StoredDataError,
    UsageError,
)
from cached_sessions.web import AnonymousSessionError, SessionStoreUnavailable
from tests.servers import ServerProcess


async def test_input_errors_raised_by_the_store_are_caught_by_the_base(
    server: ServerProcess, namespace: str
) -> None:
    async with RedisSessions(url=server.url, namespace=namespace, wipe=0) as store:
        calls = [
            (MissingParameterError, store.create(app="shop", id="", ip="1.2.3.4", ttl=60)),
            (InvalidFormatError, store.get(app="shop", token="short")),
            (InvalidValueError, store.create(app="shop", id="bob", ip="1.2.3.4", ttl=5)),
        ]
        for kind, call in calls:
            try:
                await call
            except SessionsError as error:
                assert type(error) is kind
                assert isinstance(error, InvalidInputError) and isinstance(error, ValueError)
            else:
                pytest.fail(f"no {kind.__name__}")
    with pytest.raises(SessionsError) as closed:
        await store.get(app="shop", token="A" * 64)
    assert isinstance(closed.value, SessionsClosedError)


ERRORS: list[tuple[SessionsError, tuple[type[Exception], ...]]] = [
    (StoredDataError("d is not JSON"), (RuntimeError,)),
    (SessionsClosedError(), (RuntimeError,)),
    (NotDurableError("kill", 0, 1, 0.5), (RedisTimeoutError,)),
    (
        IncompleteKillError("killall", 3, RedisConnectionError("gone")),
        (RedisConnectionError, RedisTimeoutError),
    ),
    (SessionStoreUnavailable("Redis is away"), ()),
    (AnonymousSessionError(), (RuntimeError,)),
    (UsageError("not started"), (RuntimeError,)),
]


@pytest.mark.parametrize(("error", "also"), ERRORS, ids=lambda e: type(e).__name__)
def test_every_other_error_is_caught_by_the_base(
    error: SessionsError, also: tuple[type[Exception], ...]
) -> None:
    try:
        raise error
    except SessionsError as caught:
        assert caught is error and str(caught)
    assert all(isinstance(error, kind) for kind in also)
    assert not isinstance(error, ValueError)  # only input and option errors are ValueErrors


def raises_configuration_error(make: Callable[[], object]) -> str:
    with pytest.raises(SessionsError) as caught:
        make()
    assert type(caught.value) is ConfigurationError and isinstance(caught.value, ValueError)
    return str(caught.value)


def test_bad_options_are_configuration_errors_where_they_are_given() -> None:
    store = RedisSessions(url="redis://127.0.0.1:1/0")
    bad: list[Callable[[], object]] = [
        lambda: RedisSessions(url="redis://127.0.0.1:1/0", cachemax=0),
        lambda: RedisSessions(url="redis+sentinel://only-a-host/"),
        lambda: RedisSessions(buckets=0),
        lambda: setup_sessions(web.Application(), store, app_name="shop", samesite="Loose"),
        lambda: setup_sessions(web.Application(), store, app_name=42),  # type: ignore[arg-type]
        lambda: SessionMiddleware(Starlette(), store, app_name="shop", secrets=["short"]),
        lambda: SessionMiddleware(Starlette(), store, app_name="shop", cookie_name="a b"),
    ]
    messages = [raises_configuration_error(make) for make in bad]
    assert all(messages), messages


async def test_calls_at_the_wrong_time_are_usage_errors() -> None:
    store = RedisSessions(url="redis://127.0.0.1:1/0")
    with pytest.raises(UsageError, match="not started"):
        _ = store.redis
    request = make_mocked_request("GET", "/")
    with pytest.raises(UsageError, match="no session middleware"):
        await aiohttp_ext.get_session(request)
    with pytest.raises(UsageError, match="no session middleware"):
        await asgi_ext.get_session(Request({"type": "http", "headers": []}))
