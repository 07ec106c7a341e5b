"""The request-scoped session: a mutable mapping over the session's data `d`.

Reads come from the copy loaded at the start of the request. Assignments are checked
at once (so a bad value fails where it is written) and remembered as changes; the
middleware writes only the changed and deleted keys, once, before the response
headers go out. An anonymous session (no user yet) holds no data: `upgrade()` first.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from cached_sessions import SessionDict
from cached_sessions.validation import dump_value, validate_data_item

from . import csrf
from .errors import AnonymousSessionError, SessionStoreUnavailable

if TYPE_CHECKING:
    from .middleware import RequestState

__all__ = ["AnonymousSessionError", "SavePolicy", "Session"]

SavePolicy = Literal["changed", "always", "never"]
SAVE_POLICIES: Final = ("changed", "always", "never")


class Session(MutableMapping[str, Any]):
    """See the module docstring. `token` is None while the session is anonymous.

    `unavailable` is True when Redis could not be reached and the app chose to go on
    anonymous (`on_unavailable="anonymous"`).
    """

    __slots__ = ("_changes", "_data", "_save_policy", "_state", "_stored", "_token", "unavailable")

    def __init__(self, state: RequestState, stored: SessionDict | None, token: str | None) -> None:
        # Weak: the state owns this session, and a strong link back would be a cycle.
        self._state: RequestState = cast("RequestState", weakref.proxy(state))
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
        return self._stored["id"] if self._stored else None

    @property
    def is_new(self) -> bool:
        """True while no stored session stands behind this one (anonymous)."""
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
            raise ValueError(f"save_policy must be one of {', '.join(SAVE_POLICIES)}")
        self._save_policy = policy

    def wants_save(self) -> bool:
        if self._token is None or self._save_policy == "never":
            return False
        return self._save_policy == "always" or bool(self._changes)

    def __repr__(self) -> str:
        who = f"user_id={self.user_id!r}" if self._stored else "anonymous"
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
        if self._stored is None:
            raise AnonymousSessionError()
        validate_data_item(key, value)
        if value is None:  # the store's rule: None removes the key
            self._data.pop(key, None)
        else:
            self._data[key] = value
        self._changes[key] = value

    def __delitem__(self, key: str) -> None:
        if self._stored is None:
            raise AnonymousSessionError()
        del self._data[key]
        self._changes[key] = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)

    # Operations on the store

    async def save(self) -> None:
        """Write the pending changes now (the middleware does it once per request)."""
        if self._token is None or self._save_policy == "never":
            return
        state = self._state
        if self._save_policy == "always" and not self._changes:
            if not self._data:
                await state.store.get(app=state.app, token=self._token)
                return
            self._changes = dict(self._data)
        if not self._changes:
            return
        changes, self._changes = self._changes, {}
        try:
            stored = await state.store.set(app=state.app, token=self._token, d=changes)
        except BaseException:
            self._changes = {**changes, **self._changes}
            raise
        self._adopt(stored)

    async def reload(self) -> None:
        """Read the session again from Redis, dropping changes not yet saved."""
        self._changes = {}
        if self._token is None:
            return
        state = self._state
        self._adopt(await state.store.get(app=state.app, token=self._token))

    async def upgrade(self, user_id: str, ttl: int | None = None) -> None:
        """Log in: a new session (and token) for `user_id`; the old one is killed.

        Always a new token, even for a session that is logged in already, so a token
        known before the login (session fixation) never gains the user's rights.
        """
        state = self._state
        created = await state.store.create(
            app=state.app,
            id=user_id,
            ip=state.client_ip(),
            ttl=ttl if ttl is not None else state.ttl(),
        )
        old, self._token = self._token, created["token"]
        self._changes = {}
        stored = await state.store.get(app=state.app, token=self._token)
        self._stored = stored
        self._data = {}
        state.set_cookie(self._token)
        if old is not None:
            await state.store.kill(app=state.app, token=old)
            await state.emit("destroyed", "replaced by a new login", old, user_id)
        await state.emit("created", "upgrade", self._token, user_id)

    async def destroy(self) -> None:
        """Log out: kill this session and clear the cookie."""
        self._refuse_if_unavailable("log out")
        if self._token is not None:
            await self._state.store.kill(app=self._state.app, token=self._token)
        await self._ended("logout")

    async def destroy_all(self) -> None:
        """Log this user out everywhere: every session of the user id, in every worker."""
        self._refuse_if_unavailable("log out everywhere")
        if self.user_id is not None:
            await self._state.store.killsoid(app=self._state.app, id=self.user_id)
        await self._ended("logout everywhere")

    def _refuse_if_unavailable(self, action: str) -> None:
        # The request went on anonymous only because Redis was away: the real session
        # may still exist, so saying "logged out" would be a lie. The middleware answers
        # 503 instead, and the cookie stays.
        if self.unavailable:
            raise SessionStoreUnavailable(f"cannot {action} while the session store is away")

    async def _ended(self, reason: str) -> None:
        if self._token is not None:
            await self._state.emit("destroyed", reason, self._token, self.user_id)
        self._become_anonymous()
        self._state.clear_cookie()

    async def kill_by(self, field: str, value: str | int | float | bool) -> int:
        """Kill every session whose data holds `field` = `value` (a `references` key).

        This session too, when it holds that value: it is anonymous afterwards. "Holds"
        is decided as the store decides, on the stored JSON text: `True` is not `1`, and
        `1` is not `1.0`, though Python finds them equal.
        """
        state = self._state
        killed = (await state.store.kill_by(app=state.app, field=field, value=value))["kill"]
        if self._stored is not None and self._holds(field, value):
            await self._ended(f"kill_by {field}")
        return killed

    def _holds(self, field: str, value: str | int | float | bool) -> bool:
        return field in self._data and dump_value(self._data[field]) == dump_value(value)

    async def csrf_token(self) -> str:
        """A CSRF token for this session: put it in forms or the X-CSRF-Token header."""
        key = self._state.csrf_key(create=True)
        assert key is not None
        return csrf.csrf_token(key)

    async def verify_csrf(self, token: object) -> bool:
        """Whether `token` was made for this session (constant-time)."""
        return csrf.verify_csrf(self._state.csrf_key(create=False), token)

    async def soid(self) -> list[SessionDict]:
        """The live sessions of this user (empty when anonymous)."""
        if self._stored is None:
            return []
        state = self._state
        return (await state.store.soid(app=state.app, id=self._stored["id"]))["sessions"]

    async def soapp(self, delta_time: int = 600) -> list[SessionDict]:
        state = self._state
        return (await state.store.soapp(app=state.app, delta_time=delta_time))["sessions"]

    async def activity(self, delta_time: int = 600) -> int:
        state = self._state
        return (await state.store.activity(app=state.app, delta_time=delta_time))["activity"]

    def _adopt(self, stored: SessionDict | None) -> None:
        """Take what Redis holds now; None: killed or expired meanwhile (another worker
        logged this user out), so the request goes on anonymous."""
        if stored is None:
            self._become_anonymous()
            self._state.clear_cookie()
        else:
            self._stored = stored
            self._data = stored.get("d") or {}

    def _become_anonymous(self) -> None:
        self._stored = None
        self._token = None
        self._data = {}
        self._changes = {}
