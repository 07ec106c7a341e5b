"""The session cookie is read as aiohttp reads it, on every header.

The middleware reads its one cookie without aiohttp's full parse (which builds a
Morsel per cookie and costs more than the rest of a cache hit under load). These
properties hold it to aiohttp's own reading: the same value, or the same absence,
for browser-shaped headers (the fast path) and for anything else (the scanner), and
every copy of a repeated cookie, in order (aiohttp's parser, before its dict keeps the
last one). The scanner's work is bounded by counting the pairs it reads.
"""

from __future__ import annotations

import string

import pytest
from aiohttp._cookie_helpers import parse_cookie_header  # no public API reads every copy
from aiohttp.test_utils import make_mocked_request
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aiohttp_ext.cookies import request_cookie
from cached_sessions.web.cookie_header import (
    _PLAIN_HEADER,
    MAX_COOKIE_PAIRS,
    CookieScanner,
    TooManyCookies,
    cookie_values,
)

NAME = "sid"
TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
# What aiohttp keeps in an unquoted value, less `,`.
PLAIN_VALUE_CHARS = string.ascii_letters + string.digits + "_!#%&'~`><@:/$*+-.^|)(?}{=[]"
SETTINGS = settings(max_examples=400, deadline=None, database=None)


def aiohttp_reading(header: str | None, name: str = NAME) -> str | None:
    headers = {} if header is None else {"Cookie": header}
    return make_mocked_request("GET", "/", headers=headers).cookies.get(name)


def ours(header: str | None, name: str = NAME) -> str | None:
    headers = {} if header is None else {"Cookie": header}
    return request_cookie(make_mocked_request("GET", "/", headers=headers), name)


names = st.one_of(
    st.sampled_from([NAME, "SID", "sid2", "xsid", "_ga", "csrf", "path", "Max-Age"]),
    st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=8),
)
plain_values = st.text(alphabet=PLAIN_VALUE_CHARS, max_size=24)
spaces = st.sampled_from(["", " ", "  ", "\t"])


@st.composite
def browser_headers(draw: st.DrawFn) -> str:
    """`name=value` pairs joined by `;` and some blanks: what browsers send."""
    pairs = draw(st.lists(st.tuples(names, plain_values), min_size=1, max_size=12))
    out = draw(spaces)
    for index, (name, value) in enumerate(pairs):
        if index:
            out += draw(spaces) + ";" + draw(spaces)
        out += f"{name}={value}"
    return out + draw(spaces)


@SETTINGS
@given(header=browser_headers())
@example(header="sid=a; sid=b")  # the last one wins, as in aiohttp
@example(header="sid=; other=1")
@example(header="other=1; sid=a==")
def test_browser_shaped_headers_take_the_fast_path_and_read_alike(header: str) -> None:
    assert _PLAIN_HEADER.fullmatch(header) is not None
    assert ours(header) == aiohttp_reading(header)


tricky = st.sampled_from([*';=",\\ \t', "sid=", "; sid=", '"', "\\012", '\\"', ",", "Mon, "])
any_text = st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters=[chr(c) for c in range(0x20) if c != 0x09] + ["\x7f"],
)


@SETTINGS
@given(header=st.lists(st.one_of(tricky, any_text), max_size=60).map("".join))
@example(header='sid="quoted"')
@example(header='sid="a\\"b"; x=1')
@example(header="sid=Mon, 01 Jan 2024 00:00:00 GMT")
@example(header="a=1 sid=2")
@example(header="sid")
@example(header="sid=a;;sid=b")
def test_any_header_reads_like_aiohttp(header: str) -> None:
    assert ours(header) == aiohttp_reading(header)


def test_no_header_and_other_names() -> None:
    assert ours(None) is None
    assert ours("other=1") is None
    assert ours("sidx=1; xsid=2") is None
    assert ours("sidx=1; sid=2", "sidx") == "1"


def aiohttp_copies(header: str, name: str = NAME) -> list[str]:
    return [morsel.value for key, morsel in parse_cookie_header(header) if key == name]


@SETTINGS
@given(header=st.lists(st.one_of(tricky, any_text, st.just("; sid=1")), max_size=60).map("".join))
@example(header='sid=1; sid="2"')
@example(header="sid; sid=")
@example(header='x="; sid=1"; sid=2')  # the first `sid` is inside a quoted value
@example(header="sid=Mon, 01 Jan 2024 00:00:00 GMT; sid=Wed Jun  9 10:18:14 2021")
def test_every_copy_of_a_repeated_cookie_reads_like_aiohttp(header: str) -> None:
    assert cookie_values(header, NAME) == aiohttp_copies(header)


@pytest.mark.parametrize(
    "header",
    [
        "; ".join(f"c{i}=v" for i in range(1900)) + "; sid=x",  # plain: split at `;`
        '"; ' + "; ".join("a=b" for _ in range(1900)) + "; sid=x",  # 1,900 tiny cookies
        "sid=1 " + "a=1 " * 2000,  # pairs ended by blanks
        "sid" + ';"a' * 2700,  # no `=` anywhere (aiohttp searches for one at each pair)
    ],
)
def test_past_the_pair_bound_the_reading_gives_up(header: str) -> None:
    with pytest.raises(TooManyCookies):
        cookie_values(header, NAME)
    if _PLAIN_HEADER.fullmatch(header) is None:
        scanner = CookieScanner(header, NAME)
        with pytest.raises(TooManyCookies):
            scanner.values()
        assert scanner.pairs == MAX_COOKIE_PAIRS + 1  # it stopped there


def test_up_to_the_pair_bound_every_pair_is_read() -> None:
    pairs = [f"c{i}=v" for i in range(MAX_COOKIE_PAIRS - 1)]
    for header in ("; ".join([*pairs, "sid=x"]), "; ".join(['q="v"', *pairs[1:], "sid=x"])):
        assert cookie_values(header, NAME) == aiohttp_copies(header) == ["x"]


def test_a_long_quoted_value_is_one_pair() -> None:
    escaped = 'c\\"' * 10  # escaped quotes inside a quoted value
    header = "sid=" + "a" * 64 + '; x="' + "b" * 7400 + '"; y="' + escaped + '"'
    scanner = CookieScanner(header, NAME)
    assert scanner.values() == aiohttp_copies(header) == ["a" * 64]
    assert scanner.pairs == 3
