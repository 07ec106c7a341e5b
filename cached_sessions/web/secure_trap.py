"""The Secure-cookie trap, said out loud: a login that "works" and does not stick.

A `Secure` cookie set in answer to a plain-HTTP request is dropped by the browser
(except on localhost, which browsers treat as secure), so the next page finds no
session, and nothing anywhere says why. The adapters call `warn_if_dropped` when a
response sets a cookie; the first such response of the process logs one warning that
says what to change. Over HTTPS, on localhost, or with `secure=False` it says nothing.
"""

from __future__ import annotations

import ipaddress
import logging

__all__ = ["warn_if_dropped"]

log = logging.getLogger(__name__)

SECURE_SCHEMES = frozenset({"https", "wss"})

_warned = False  # once per process: the first occurrence is the one worth reading


def is_local(host: str) -> bool:
    """Whether a Host header names this machine (`localhost`, `*.localhost`, a loopback
    address), where browsers keep Secure cookies over plain HTTP too."""
    name = host.rpartition("@")[2]
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def warn_if_dropped(secure: bool, scheme: str, host: str) -> None:
    """Log once per process when a Secure cookie goes out over plain HTTP to a host
    other than localhost: the browser will drop it."""
    global _warned
    if _warned or not secure or scheme.lower() in SECURE_SCHEMES or is_local(host):
        return
    _warned = True
    log.warning(
        "a Secure session cookie was set in answer to a plain-HTTP request for host %r: "
        "browsers drop it, so logins will not stick. Serving plain HTTP on purpose (local "
        "development)? pass secure=False. Behind a TLS proxy? let the app see the original "
        "scheme: the proxy sends X-Forwarded-Proto and the app trusts it from the proxy only "
        "(uvicorn --forwarded-allow-ips; aiohttp: a middleware that calls "
        "request.clone(scheme=...)). Said once per process.",
        host,
    )
