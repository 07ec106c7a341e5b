"""Input rules: the right error class, name and message, before any I/O."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from cached_sessions import (
    InvalidFormatError,
    InvalidValueError,
    MissingParameterError,
    RedisSessions,
    SessionsError,
)
from cached_sessions.validation import (
    MAX_DATA_BYTES,
    MAX_DATA_KEYS,
    MAX_SAFE_INTEGER,
    MAX_TTL,
    encode_create_data,
    encode_data_patch,
    validate_app,
    validate_id,
    validate_ip,
    validate_token,
    validate_ttl,
)
from tests.servers import free_port

TOKEN = "a" * 64
M, F, V = MissingParameterError, InvalidFormatError, InvalidValueError
NAMES = {M: "missingParameter", F: "invalidFormat", V: "invalidValue"}


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: validate_app(None), M, "No app supplied"),
        (lambda: validate_app(""), M, "No app supplied"),
        (lambda: validate_app("ab"), F, "Invalid app format"),
        (lambda: validate_app("a" * 21), F, "Invalid app format"),
        (lambda: validate_app("sh op"), F, "Invalid app format"),
        (lambda: validate_app(123), F, "Invalid app format"),
        (lambda: validate_token(None), M, "No token supplied"),
        (lambda: validate_token("a" * 63), F, "Invalid token format"),
        (lambda: validate_token("a" * 65), F, "Invalid token format"),
        (lambda: validate_token("-" * 64), F, "Invalid token format"),
        (lambda: validate_token("a" * 63 + "\n"), F, "Invalid token format"),
        (lambda: validate_id(""), M, "No id supplied"),
        (lambda: validate_id("x" * 129), F, "Invalid id format"),
        (lambda: validate_id("a\nb"), F, "Invalid id format"),
        (lambda: validate_id("a\x85b"), F, "Invalid id format"),
        (lambda: validate_id("\ud800"), F, "Invalid id format"),
        (lambda: validate_id(42), F, "Invalid id format"),
        (lambda: validate_ip(None), M, "No ip supplied"),
        (lambda: validate_ip("1" * 40), F, "Invalid ip format"),
        (lambda: validate_ttl(9), V, "ttl must be a positive integer >= 10"),
        (lambda: validate_ttl(True), V, "ttl must be a positive integer >= 10"),
        (lambda: validate_ttl(60.0), V, "ttl must be a positive integer >= 10"),
        (lambda: validate_ttl("60"), V, "ttl must be a positive integer >= 10"),
        (lambda: validate_ttl(MAX_TTL + 1), V, f"ttl must be at most {MAX_TTL} (one year)"),
        (lambda: encode_data_patch(None), M, "No d supplied"),
        (lambda: encode_data_patch([("a", 1)]), V, "d must be an object"),
        (lambda: encode_data_patch("{}"), V, "d must be an object"),
        (lambda: encode_data_patch({}), V, "d must contain at least one key"),
        (lambda: encode_create_data({}), V, "d must contain at least one key"),
        (
            lambda: encode_data_patch({"a": (1,)}),
            V,
            "d.a has a forbidden type. Only strings, numbers, booleans, null, lists and "
            "objects (dicts with string keys) are allowed.",
        ),
        (
            lambda: encode_data_patch({"n": {"x": {1}}}),
            V,
            "d.n.x has a forbidden type. Only strings, numbers, booleans, null, lists and "
            "objects (dicts with string keys) are allowed.",
        ),
        (lambda: encode_data_patch({"f": math.nan}), V, "d.f must be a finite number"),
        (lambda: encode_data_patch({"f": math.inf}), V, "d.f must be a finite number"),
        (
            lambda: encode_data_patch({"i": MAX_SAFE_INTEGER + 1}),
            V,
            "d.i is outside the integers a JSON number keeps exact (|n| <= 2**53 - 1)",
        ),
        (lambda: encode_data_patch({1: "x"}), V, "d keys must be strings, got int"),
        (lambda: encode_data_patch({"": "x"}), V, "d keys must not be empty"),
        (
            lambda: encode_data_patch({"\ud800": None}),
            V,
            "d key '\\ud800' is not valid Unicode",
        ),
        (
            lambda: encode_data_patch({"s": "\udc00"}),
            V,
            "d holds text that is not valid Unicode (a lone surrogate)",
        ),
        (
            lambda: encode_data_patch({"s": "x" * MAX_DATA_BYTES}),
            V,
            f"d is {MAX_DATA_BYTES + 8} bytes as JSON; at most {MAX_DATA_BYTES} are allowed",
        ),
        (
            lambda: encode_data_patch(dict.fromkeys(map(str, range(MAX_DATA_KEYS + 1)), 1)),
            V,
            f"d has {MAX_DATA_KEYS + 1} keys; at most {MAX_DATA_KEYS} are allowed",
        ),
        (
            lambda: encode_create_data(dict.fromkeys(map(str, range(MAX_DATA_KEYS + 1)))),
            V,
            f"d has {MAX_DATA_KEYS + 1} keys; at most {MAX_DATA_KEYS} are allowed",
        ),
    ],
)  # fmt: skip
def test_errors_name_and_message(call: Any, error: type[SessionsError], message: str) -> None:
    with pytest.raises(error) as caught:
        call()
    assert caught.value.name == NAMES[error]
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_accepted_values_come_back_unchanged() -> None:
    assert validate_app("shop_1-a") == "shop_1-a"
    assert validate_id("tenant:42:user é") == "tenant:42:user é"
    assert (
        validate_ip("2001:0db8:85a3:0000:0000:8a2e:0370:7334")
        == "2001:0db8:85a3:0000:0000:8a2e:0370:7334"
    )
    assert validate_ttl(10) == 10
    assert validate_ttl(MAX_TTL) == MAX_TTL


def test_create_data_drops_nulls_and_keeps_numbers_exact() -> None:
    assert encode_create_data(None) == ""
    assert encode_create_data({"a": None}) == ""
    encoded = encode_create_data(
        {"i": MAX_SAFE_INTEGER, "f": 0.1 + 0.2, "b": False, "s": "é", "n": None}
    )
    assert encoded == '{"i":9007199254740991,"f":0.30000000000000004,"b":false,"s":"é"}'


def test_d_may_hold_as_many_keys_as_the_cap() -> None:
    at_cap = dict.fromkeys(map(str, range(MAX_DATA_KEYS)), 0)
    assert len(encode_data_patch(at_cap)) == MAX_DATA_KEYS
    assert encode_create_data(at_cap).count(":") == MAX_DATA_KEYS


def test_patch_marks_removals_with_an_empty_value() -> None:
    assert encode_data_patch({"a": 1, "b": None}) == [("a", '"a"', "1"), ("b", '"b"', "")]


def test_huge_id_is_refused_in_linear_time() -> None:
    # redis-sessions' own id pattern backtracks on input like this one.
    hostile = "a" * 10_000 + "\n"
    runs = 200
    started = time.perf_counter()
    for _ in range(runs):
        with pytest.raises(InvalidFormatError):
            validate_id(hostile)
    per_call = (time.perf_counter() - started) / runs
    assert per_call < 0.001, f"a 10,000-character id took {per_call * 1e3:.3f} ms to refuse"


async def test_validation_runs_before_any_io() -> None:
    # Nothing listens on this port: any I/O would raise ConnectionError, not these.
    store = RedisSessions(url=f"redis://127.0.0.1:{free_port()}/0", wipe=0)
    try:
        with pytest.raises(InvalidFormatError):
            await store.get(app="shop", token="short")
        with pytest.raises(MissingParameterError):
            await store.create(app="shop", id="", ip="1.2.3.4")
        with pytest.raises(InvalidValueError):
            await store.set(app="shop", token=TOKEN, d={"x": object()})
        too_many = dict.fromkeys(map(str, range(MAX_DATA_KEYS + 1)), 1)
        with pytest.raises(InvalidValueError, match="keys; at most"):
            await store.set(app="shop", token=TOKEN, d=too_many)
        with pytest.raises(InvalidValueError, match="keys; at most"):
            await store.create(app="shop", id="u", ip="1.2.3.4", d=too_many)
        with pytest.raises(InvalidValueError):
            await store.soapp(app="shop", delta_time=5)
        with pytest.raises(InvalidFormatError):
            await store.killsoid(app="shop", id="x" * 200)
        assert store._redis is None, "validation must fail before the store even connects"
    finally:
        await store.aclose()
