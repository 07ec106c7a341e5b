"""The request-scoped session: a mutable mapping over the session's data `d`.

Reads come from the copy loaded at the start of the request. Assignments are checked
at once (so a bad value fails where it is written) and remembered as changes; the
middleware writes only the changed and deleted keys, once, before the response
headers go out. A list or an object read from the session is the session's own copy:
change it in place and assign it again (`session["cart"] = cart`) to have it saved.

An anonymous visitor may hold data too (unless the app turned `anonymous_data` off):
the first write that is saved creates a session that belongs to no user; `upgrade()`
(log in) turns it into the user's session, its data kept.

A Session is data plus change tracking. What needs I/O (`upgrade`, `save`, `destroy`,
...) goes through the request's Exchange, which owns no session and no request, so
nothing here links back to the request: no cycle, no weak reference.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Literal

from cached_sessions import Device, InvalidValueError, SessionDict
from cached_sessions.errors import ConfigurationError
from cached_sessions.validation import ANONYMOUS_ID, dump_value, validate_data_item

from . import csrf
from .errors import AnonymousSessionError

if TYPE_CHECKING:
    from .exchange import Exchange

__all__ = ["AnonymousSessionError", "SavePolicy", "Session"]

SavePolicy = Literal["changed", "always", "never"]
SAVE_POLICIES: Final = ("changed", "always", "never")
# The data key that holds the flash messages: a list of [category, message] pairs.
FLASHES: Final = "_flashes"


class Session(MutableMapping[str, Any]):
    """See the module docstring. `token` is None while no stored session stands
    behind this one; `user_id` is None while nobody is logged in (anonymous).

    `unavailable` is True when Redis could not be reached and the app chose to go on
    anonymous (`on_unavailable="anonymous"`).
    """

    __slots__ = (
        "_changes", "_data", "_exchange", "_save_policy", "_stored", "_token", "unavailable",
    )  # fmt: skip

    def __init__(self, exchange: Exchange, stored: SessionDict | None, token: str | None) -> None:
        # The exchange does the I/O; it links to neither this session nor the request.
        self._exchange = exchange
        self._stored = stored
        self._token = token
        # The store hands every caller a copy of `d`: this session may own it.
        self._data: dict[str, Any] = (stored.get("d") or {}) if stored else {}
        self._changes: dict[str, Any] = {}
        self._save_policy: SavePolicy = "changed"
        self.unavailable = False

    # Identity

    @property
    def token(self) -> str | None:
        return self._token

    @property
    def user_id(self) -> str | None:
        """The logged-in user's id; None for an anonymous visitor, with data or not."""
        stored = self._stored
        if stored is None or stored["id"] == ANONYMOUS_ID:
            return None
        return stored["id"]

    @property
    def is_anonymous(self) -> bool:
        """True while nobody is logged in (the session may still hold data)."""
        return self.user_id is None

    @property
    def is_new(self) -> bool:
        """True while no stored session stands behind this one: nobody is logged in
        and nothing was saved yet."""
        return self._stored is None

    @property
    def meta(self) -> dict[str, Any]:
        """`r`, `w`, `ttl`, `idle` and `ip` as read at the start of the request."""
        stored = self._stored
        if stored is None:
            return {}
        return {key: stored[key] for key in ("r", "w", "ttl", "idle", "ip")}

    @property
    def changed(self) -> bool:
        return bool(self._changes)

    @property
    def save_policy(self) -> SavePolicy:
        """This request's rule: `changed` (default) writes the changed keys;
        `always` writes every key even if unchanged (or, with no data, counts a read so
        the expiry slides); `never` writes nothing and drops the changes."""
        return self._save_policy

    @save_policy.setter
    def save_policy(self, policy: SavePolicy) -> None:
        if policy not in SAVE_POLICIES:
            raise ConfigurationError(f"save_policy must be one of {', '.join(SAVE_POLICIES)}")
        self._save_policy = policy

    def wants_save(self) -> bool:
        if self._save_policy == "never":
            return False
        if self._token is None:  # an anonymous visitor's first write creates a session
            return bool(self._changes)
        return self._save_policy == "always" or bool(self._changes)

    def __repr__(self) -> str:
        who = "anonymous" if self.user_id is None else f"user_id={self.user_id!r}"
        return f"<Session {who} keys={sorted(self._data)} changed={sorted(self._changes)}>"

    # The mapping

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def get(self, key: str, default: Any = None) -> Any:
        # The mixin's get goes through __getitem__ and a try block; handlers call this most.
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __setitem__(self, key: str, value: Any) -> None:
        if self._stored is None and not self._exchange.anonymous_data:
            raise AnonymousSessionError()
        validate_data_item(key, value)
        if value is None:  # the store's rule: None removes the key
            self._data.pop(key, None)
        else:
            self._data[key] = value
        self._changes[key] = value

    def __delitem__(self, key: str) -> None:
        if self._stored is None and not self._exchange.anonymous_data:
            raise AnonymousSessionError()
        del self._data[key]
        self._changes[key] = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)

    # Operations on the store: each goes through the request's Exchange, which holds
    # no link to this session nor to the request (see exchange.py).

    async def save(self) -> None:
        """Write the pending changes now (the middleware does it once per request)."""
        await self._exchange.save(self)

    async def reload(self) -> None:
        """Read the session again from Redis, dropping changes not yet saved."""
        await self._exchange.reload(self)

    async def upgrade(self, user_id: str, ttl: int | None = None, *, keep: bool = True) -> None:
        """Log in: a new session (and token) for `user_id`; the old one is killed, in
        one script.

        Always a new token, even for a session that is logged in already, so a token
        known before the login (session fixation) never gains the user's rights. With
        `keep` the new session holds this one's data (what an anonymous visitor
        stored, changes not yet saved included) when this one is anonymous or of the
        same user; with `keep=False`, or from another user's session, it starts empty.
        """
        await self._exchange.upgrade(self, user_id, ttl, keep)

    async def destroy(self) -> None:
        """Log out: kill this session and clear the cookie."""
        await self._exchange.destroy(self)

    async def destroy_all(self) -> None:
        """Log this user out everywhere: every session of the user id, in every worker."""
        await self._exchange.destroy_all(self)

    async def destroy_others(self) -> int:
        """Log this user out of every other device, keep this one (one script);
        returns how many sessions ended. Nothing to do for an anonymous visitor."""
        return await self._exchange.destroy_others(self)

    async def devices(self) -> list[Device]:
        """This user's live sessions (see cached_sessions.Device): a handle each, which
        one is this one, created, last active, ip and user agent. Empty when anonymous.
        A handle is no credential: a page may show it, and `revoke` takes it."""
        return await self._exchange.devices(self)

    async def revoke(self, handle: str) -> bool:
        """End the session of one of this user's devices (a handle from `devices`);
        whether one ended. A handle of another user's session ends nothing; this
        session's own handle is a logout."""
        return await self._exchange.revoke(self, handle)

    # Flash messages: kept in the session until read, across a redirect.

    def flash(self, message: str, category: str = "info") -> None:
        """Keep a message for the next page that calls `pop_flashes` (anonymous
        visitors too, unless the app turned `anonymous_data` off)."""
        if not isinstance(message, str) or not isinstance(category, str):
            raise InvalidValueError("a flash message and its category must be strings")
        self[FLASHES] = [*self._flashes(), [category, message]]

    def pop_flashes(self) -> list[tuple[str, str]]:
        """The messages kept by `flash`, oldest first, as (category, message); they
        are removed (saved with the response)."""
        flashes = self._flashes()
        if FLASHES in self._data:
            del self[FLASHES]
        return [(category, message) for category, message in flashes]

    def _flashes(self) -> list[list[str]]:
        stored = self._data.get(FLASHES)
        if not isinstance(stored, list):
            return []
        return [
            list(item)
            for item in stored
            if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)
        ]

    async def kill_by(self, field: str, value: str | int | float | bool) -> int:
        """Kill every session whose data holds `field` = `value` (a `references` key).

        This session too, when it holds that value: it is anonymous afterwards. "Holds"
        is decided as the store decides, on the stored JSON text: `True` is not `1`, and
        `1` is not `1.0`, though Python finds them equal.
        """
        return await self._exchange.kill_by(self, field, value)

    def holds(self, field: str, value: str | int | float | bool) -> bool:
        """Whether the data holds `field` = `value`, compared as stored JSON text."""
        return field in self._data and dump_value(self._data[field]) == dump_value(value)

    async def csrf_token(self) -> str:
        """A CSRF token for this session: put it in forms or the X-CSRF-Token header."""
        key = self._exchange.csrf_key(self._csrf_token_key(), create=True)
        assert key is not None  # create=True always gives one
        return csrf.csrf_token(key)

    async def verify_csrf(self, token: object) -> bool:
        """Whether `token` was made for this session (constant-time)."""
        return csrf.verify_csrf(
            self._exchange.csrf_key(self._csrf_token_key(), create=False), token
        )

    def _csrf_token_key(self) -> str | None:
        # A logged-in session's tokens are bound to its token; an anonymous visitor's,
        # with data or not, to the anonymous key of its CSRF cookie, so that a form
        # rendered before the visitor's first write still verifies after it.
        return None if self.user_id is None else self._token

    async def soid(self) -> list[SessionDict]:
        """The live sessions of this user (empty when anonymous)."""
        user_id = self.user_id
        return [] if user_id is None else await self._exchange.soid(user_id)

    async def soapp(self, delta_time: int = 600) -> list[SessionDict]:
        return await self._exchange.soapp(delta_time)

    async def activity(self, delta_time: int = 600) -> int:
        return await self._exchange.activity(delta_time)

    # Change tracking, for the Exchange

    def _take_changes(self) -> dict[str, Any]:
        """The changes to write, as the save policy says; they are pending no more."""
        if self._save_policy == "always" and not self._changes:
            self._changes = dict(self._data)
        changes, self._changes = self._changes, {}
        return changes

    def _restore_changes(self, changes: dict[str, Any]) -> None:
        """A write failed: its changes are pending again, under any made meanwhile."""
        self._changes = {**changes, **self._changes}

    def _drop_changes(self) -> None:
        self._changes = {}

    def _log_in(self, stored: SessionDict, token: str) -> None:
        """A new token and what Redis holds for it; no changes pending."""
        self._token = token
        self._stored = stored
        self._data = stored.get("d") or {}
        self._changes = {}

    def _adopt(self, stored: SessionDict) -> None:
        """Take what Redis holds now."""
        self._stored = stored
        self._data = stored.get("d") or {}

    def _become_anonymous(self) -> None:
        self._stored = None
        self._token = None
        self._data = {}
        self._changes = {}
