"""The framework-neutral session layer under the aiohttp and ASGI adapters.

It owns everything that is not HTTP plumbing: reading and signing tokens, the cookie
policy, CSRF, the checked options, loading a session, the Session with its change
tracking, and the commit. It talks to the store and never to a request object: the
adapters read what it needs off their requests and hand it over as plain values.

    options     the checked keyword options of a middleware
    exchange    one request's I/O for its session, the cookies and events it owes
    load        the credential, the cache, Redis, the `valid` hook
    commit      the changes, cookies and events that go out with a response
    session     Session: a mapping over the data, plus change tracking
    cookies     the cookie policy and names;  cookie_header: reading a Cookie header
    signing     HMAC signing (cookies, CSRF) and the secrets' checks
    csrf        CSRF tokens and the origin check
    events      SessionEvent and its log line
    errors      the errors of the web layer
    startup     starting the store with the app, by the failure policy
    secure_trap the warning for a Secure cookie sent over plain HTTP
"""

from .errors import UNAVAILABLE_ERRORS, AnonymousSessionError, SessionStoreUnavailable
from .events import SessionEvent
from .exchange import Exchange
from .options import SessionOptions, make_options
from .session import SavePolicy, Session
from .signing import TokenSigner

__all__ = [
    "UNAVAILABLE_ERRORS",
    "AnonymousSessionError",
    "Exchange",
    "SavePolicy",
    "Session",
    "SessionEvent",
    "SessionOptions",
    "SessionStoreUnavailable",
    "TokenSigner",
    "make_options",
]
