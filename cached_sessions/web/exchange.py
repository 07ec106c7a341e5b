"""What one request exchanges with the store, and what it owes its response.

The adapter makes one Exchange per request that reads its session, from values it
reads off the request at that moment (the app name, the client's address, the ttl,
the Cookie header). The Exchange keeps no link to the request nor to the Session:
a Session links to its Exchange and passes itself to each operation, and events wait
in `events` until the adapter, which holds the request, delivers them (before the
response goes out, and at the end of the request). So a request's objects form no
cycle, and reference counting frees them as soon as the framework drops the request.
"""

from __future__ import annotations

import time

from cached_sessions import Device, RedisSessions, SessionDict
from cached_sessions.validation import ANONYMOUS_ID, MAX_USER_AGENT_LENGTH

from . import csrf
from .cookie_header import TooManyCookies, cookie_values
from .errors import SessionStoreUnavailable
from .events import SessionEvent, hint
from .options import SessionOptions
from .session import Session

__all__ = ["Exchange", "client_user_agent"]


def client_user_agent(header: str | None) -> str:
    """What a client's User-Agent header can be recorded as: bounded, printable, valid
    UTF-8 ('' without one). A client sends anything; this never refuses."""
    if not header:
        return ""
    text = header[:MAX_USER_AGENT_LENGTH]
    if not text.isprintable():
        text = "".join(char for char in text if char.isprintable())
    return text.encode("utf-8", "replace").decode("utf-8")


class Exchange:
    """One request's I/O for its session, the cookies it owes, and its pending events."""

    __slots__ = (
        "_cookie", "_csrf_key", "_csrf_key_new", "app", "bearer_session", "client_ip",
        "cookie_header", "events", "options", "presented", "ttl", "user_agent_header",
    )  # fmt: skip

    def __init__(
        self,
        options: SessionOptions[object],
        *,
        app: str,
        client_ip: str,
        ttl: int,
        cookie_header: str | None,
        user_agent: str | None = None,
    ) -> None:
        self.options = options
        self.app = app
        self.client_ip = client_ip[:39]
        self.ttl = ttl
        self.cookie_header = cookie_header
        self.user_agent_header = user_agent  # cleaned only for a session being created
        self.presented = False  # the request carried a session cookie
        self.bearer_session = False  # it authenticated with a bearer token that was found
        self.events: list[SessionEvent] = []
        # None: leave the cookie alone; "": clear it; else: the token to set it to.
        self._cookie: str | None = None
        self._csrf_key: str | None = None
        self._csrf_key_new = False

    @property
    def store(self) -> RedisSessions:
        return self.options.store

    @property
    def anonymous_data(self) -> bool:
        """Whether an anonymous visitor's writes are kept (the app's option)."""
        return self.options.anonymous_data

    # Cookies and events

    def set_cookie(self, token: str) -> None:
        # A bearer client keeps its token itself: a cookie would turn a credential that
        # is sent only on purpose into one the browser sends on every request.
        if not self.bearer_session:
            self._cookie = token

    def clear_cookie(self) -> None:
        self._cookie = "" if self.presented or self._cookie else None

    def note(self, kind: str, reason: str, token: str | None, user_id: str | None = None) -> None:
        """An event, kept for the adapter to deliver with the request."""
        self.events.append(SessionEvent(kind, reason, user_id, hint(token)))

    def take_events(self) -> list[SessionEvent]:
        events, self.events = self.events, []
        return events

    def owes_commit(self, session: Session) -> bool:
        """Whether the response must carry a save or a cookie (most reads owe none)."""
        return self._cookie is not None or self._csrf_key_new or session.wants_save()

    def sets_cookie(self) -> bool:
        """Whether this response sets a cookie (rather than clearing one or none)."""
        return bool(self._cookie) or (self._csrf_key_new and self._csrf_key is not None)

    def cookie_headers(self) -> list[str]:
        """The Set-Cookie header values this response owes."""
        policy = self.options.cookie
        headers = []
        if self._cookie is not None:
            value = policy.value(self._cookie, time.time()) if self._cookie else None
            headers.append(policy.header(value))
        if self._csrf_key_new and self._csrf_key is not None:
            payload = csrf.anonymous_key_cookie(self._csrf_key, time.time())
            value = policy.signer.sign(payload) if policy.signer else payload
            name, lifetime = self.options.csrf_cookie_name, csrf.ANONYMOUS_KEY_LIFETIME
            headers.append(policy.header(value, name, max_age=lifetime))
        return headers

    # CSRF

    def csrf_key(self, token: str | None, *, create: bool) -> str | None:
        """The key CSRF tokens of the session holding `token` are made with (csrf.py)."""
        if token is not None:
            return f"session:{token}"
        if self._csrf_key is None:
            self._csrf_key = self._presented_csrf_key()
        if self._csrf_key is None and create:
            self._csrf_key, self._csrf_key_new = csrf.new_key(), True
        return None if self._csrf_key is None else f"anonymous:{self._csrf_key}"

    def _presented_csrf_key(self) -> str | None:
        """The anonymous key of the CSRF cookie, if there is exactly one, verified and
        not expired (two copies: one was planted, and which is unknowable)."""
        try:
            values = cookie_values(self.cookie_header, self.options.csrf_cookie_name)
        except TooManyCookies:
            return None
        if len(values) != 1:
            return None
        payload: str | None = values[0]
        signer = self.options.cookie.signer
        if signer is not None:
            verified = signer.verify(values[0])
            payload = verified[0] if verified else None
        return csrf.anonymous_key(payload, time.time()) if payload else None

    # Operations on the store, for the Session

    async def save(self, session: Session) -> None:
        token = session.token
        if session.save_policy == "never":
            return
        if token is None:
            await self._save_anonymous(session)
            return
        changes = session._take_changes()
        if not changes:
            if session.save_policy == "always":  # no data: count a read, slide the expiry
                await self.store.get(app=self.app, token=token)
            return
        try:
            stored = await self.store.set(app=self.app, token=token, d=changes)
        except BaseException:
            session._restore_changes(changes)
            raise
        self._adopt(session, stored)

    async def _save_anonymous(self, session: Session) -> None:
        """An anonymous visitor's first saved write: a session of no user's, with its
        own ttl. At most one per request: once made, the session has a token."""
        changes = session._take_changes()
        kept = {key: value for key, value in changes.items() if value is not None}
        if not kept:
            return
        try:
            created = await self.store.create_anonymous(
                app=self.app,
                ip=self.client_ip,
                d=kept,
                ttl=self.options.anonymous_ttl,
                user_agent=client_user_agent(self.user_agent_header),
            )
        except BaseException:
            session._restore_changes(changes)
            raise
        token = created["token"]
        session._log_in(_fresh(kept, self.client_ip, self.options.anonymous_ttl), token)
        self.set_cookie(token)
        self.note("created", "first write of an anonymous visitor", token)

    async def reload(self, session: Session) -> None:
        session._drop_changes()
        if session.token is not None:
            self._adopt(session, await self.store.get(app=self.app, token=session.token))

    async def upgrade(self, session: Session, user_id: str, ttl: int | None, keep: bool) -> None:
        old = session.token
        changes = session._take_changes()
        try:
            upgraded = await self.store.upgrade(
                app=self.app,
                token=old,
                id=user_id,
                ip=self.client_ip,
                ttl=self.ttl if ttl is None else ttl,
                d=changes if keep else None,
                keep=keep,
                user_agent=client_user_agent(self.user_agent_header),
            )
        except BaseException:
            session._restore_changes(changes)
            raise
        token = upgraded["token"]
        session._log_in(upgraded["session"], token)
        self.set_cookie(token)
        if old is not None:
            self.note("destroyed", "replaced by a new login", old, user_id)
        self.note("created", "upgrade", token, user_id)

    async def destroy(self, session: Session) -> None:
        self._refuse_if_unavailable(session, "log out")
        if session.token is not None:
            await self.store.kill(app=self.app, token=session.token)
        self._ended(session, "logout")

    async def destroy_all(self, session: Session) -> None:
        self._refuse_if_unavailable(session, "log out everywhere")
        if session.user_id is not None:
            await self.store.killsoid(app=self.app, id=session.user_id)
        elif session.token is not None:  # an anonymous visitor's data: its one session
            await self.store.kill(app=self.app, token=session.token)
        self._ended(session, "logout everywhere")

    async def destroy_others(self, session: Session) -> int:
        self._refuse_if_unavailable(session, "log out the other devices")
        user_id, token = session.user_id, session.token
        if user_id is None or token is None:
            return 0
        killed: int = (await self.store.kill_others(app=self.app, id=user_id, token=token))["kill"]
        return killed

    async def devices(self, session: Session) -> list[Device]:
        user_id = session.user_id
        if user_id is None:
            return []
        return await self.store.devices(app=self.app, id=user_id, current=session.token)

    async def revoke(self, session: Session, handle: str) -> bool:
        self._refuse_if_unavailable(session, "log out a device")
        user_id = session.user_id
        if user_id is None:
            return False
        killed = (await self.store.revoke(app=self.app, id=user_id, handle=handle))["kill"]
        if killed and session.token is not None:
            # This session's own handle? Then this request goes on anonymous.
            mine = await self.store.devices(app=self.app, id=user_id, current=session.token)
            if not any(device["current"] for device in mine):
                self._ended(session, "revoked from the device list")
        return bool(killed)

    async def kill_by(self, session: Session, field: str, value: str | int | float | bool) -> int:
        killed: int = (await self.store.kill_by(app=self.app, field=field, value=value))["kill"]
        if not session.is_new and session.holds(field, value):
            self._ended(session, f"kill_by {field}")
        return killed

    async def soid(self, user_id: str) -> list[SessionDict]:
        return (await self.store.soid(app=self.app, id=user_id))["sessions"]

    async def soapp(self, delta_time: int) -> list[SessionDict]:
        return (await self.store.soapp(app=self.app, delta_time=delta_time))["sessions"]

    async def activity(self, delta_time: int) -> int:
        count: int = (await self.store.activity(app=self.app, delta_time=delta_time))["activity"]
        return count

    def _refuse_if_unavailable(self, session: Session, action: str) -> None:
        # The request went on anonymous only because Redis was away: the real session
        # may still exist, so saying "logged out" would be a lie. The middleware answers
        # 503 instead, and the cookie stays.
        if session.unavailable:
            raise SessionStoreUnavailable(f"cannot {action} while the session store is away")

    def _ended(self, session: Session, reason: str) -> None:
        if session.token is not None:
            self.note("destroyed", reason, session.token, session.user_id)
        session._become_anonymous()
        self.clear_cookie()

    def _adopt(self, session: Session, stored: SessionDict | None) -> None:
        """Take what Redis holds now; None: killed or expired meanwhile (another worker
        logged this user out), so the request goes on anonymous."""
        if stored is None:
            session._become_anonymous()
            self.clear_cookie()
        else:
            session._adopt(stored)


def _fresh(data: dict[str, object], ip: str, ttl: int) -> SessionDict:
    """What a session just created with `data` holds (no read needed to know it)."""
    return {"id": ANONYMOUS_ID, "r": 1, "w": 1, "ttl": ttl, "idle": 0, "ip": ip, "d": data}
