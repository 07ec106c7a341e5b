"""Each EVALSHA script defines the prelude functions it calls and no others
(scripts.prelude): every call runs its script's whole prelude, so one that defined all
of them would pay for each on every call; one that missed one would fail only on the
path that calls it. This is the fallback for servers without Functions; the function
library (tests/test_functions.py) defines the whole prelude once, at load.
"""

from __future__ import annotations

import re

import pytest

from cached_sessions.scripts import OPERATIONS, PRELUDE_PARTS, _lua_file, prelude, script_source

DEFINED = re.compile(r"^local function (\w+)\(", re.M)
COMMENT = re.compile(r"--[^\n]*")


def every_prelude_function() -> set[str]:
    files = {"_lib", *(part for parts in PRELUDE_PARTS.values() for part in parts)}
    return {name for file in files for name in DEFINED.findall(_lua_file(file))}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_script_defines_every_prelude_function_it_calls(operation: str) -> None:
    source = COMMENT.sub("", script_source(operation, "local L = {}\n"))
    ours = every_prelude_function()
    defined = set(DEFINED.findall(source)) & ours
    called = set(re.findall(r"\b(\w+)\s*\(", DEFINED.sub("(", source))) & ours
    assert called <= defined, f"{operation} calls {sorted(called - defined)} undefined"
    assert defined <= called, f"{operation} defines {sorted(defined - called)} it never calls"


def test_the_read_script_carries_only_the_read_path() -> None:
    defined = set(DEFINED.findall(prelude("get")))
    assert defined == {
        "begin", "fill", "need", "undeclared", "read_session", "reply", "expiry_score",
        "touch", "need_touch",
    }  # fmt: skip
    assert len(every_prelude_function()) > 2 * len(defined)
