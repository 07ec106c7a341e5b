"""Every error the library raises derives from `SessionsError`; input errors are
`ValueError`s too, and the errors that mean "Redis failed" are redis-py's as well."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cached_sessions import (
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
    assert not isinstance(error, ValueError)  # only input errors are ValueErrors
