"""From a URL to a client: one Redis, a Redis Cluster, or a primary that Sentinel names.

    redis://[user:password@]host:port/db          one server (also rediss://, unix://)
    redis+cluster://[user:password@]host:port     a cluster, found from one of its nodes
    redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]
                                                  the primary of `service`, as the
                                                  sentinels at those addresses name it

`rediss+cluster://` and `rediss+sentinel://` speak TLS to the data nodes. For
Sentinel, the credentials are the data nodes'; sentinels that need their own password
take `?sentinel_password=...`. Every URL is shown only through `redacted_url`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from .errors import ConfigurationError

__all__ = ["connect", "is_cluster_url", "redacted_url"]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


def redacted_url(url: str) -> str:
    """The URL with its credentials and query masked, fit for a repr or a log line.

    A password may sit in the user part or in the query (`?password=...`), and a
    malformed URL may put it anywhere: only the scheme, hosts, ports and path survive.
    """
    try:
        parts = urlsplit(url)
        hosts = [_host_port(item) for item in parts.netloc.rpartition("@")[2].split(",")]
    except ValueError:
        return "<unparsable url>"
    netloc = ("***@" if "@" in parts.netloc else "") + ",".join(
        (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
        for host, port in hosts
    )
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?***" if parts.query else "")


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def check_url(url: str) -> None:
    """Refuse a URL that no client can be made from, when the store is created rather
    than at its first call. Building a client connects nowhere."""
    try:
        if urlsplit(url).scheme in CLUSTER_SCHEMES:
            ConnectionPool.from_url(url.replace("+cluster", "", 1))
        else:
            connect(url, connect_timeout=1.0)
    except ConfigurationError:
        raise
    except ValueError as error:
        raise ConfigurationError(f"bad Redis URL {redacted_url(url)}: {error}") from None


def connect(url: str, *, connect_timeout: float) -> Redis | RedisCluster:
    """A client for `url` (see the module docstring); nothing is sent until first use.

    Every client decodes replies, has no socket timeout of its own (the store gives
    each call a deadline) and `connect_timeout` to open a connection.
    """
    scheme = urlsplit(url).scheme
    options: dict[str, Any] = {
        # None, said out loud: redis-py 8 defaults to 5 s, which would cap the store's
        # deadline and put every write through asyncio.wait_for, which on Python 3.11
        # can swallow a cancel that arrives as the write completes.
        "socket_timeout": None,
        "socket_connect_timeout": connect_timeout,
        "decode_responses": True,
    }
    if scheme in CLUSTER_SCHEMES:
        plain = url.replace("+cluster", "", 1)
        return RedisCluster.from_url(plain, **options)
    if scheme in SENTINEL_SCHEMES:
        return _sentinel_primary(url, options)
    return Redis(connection_pool=ConnectionPool.from_url(url, **options))


def _host_port(text: str) -> tuple[str, int | None]:
    """`host`, `host:port` or `[v6 address]:port`."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = text.partition(":")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise ConfigurationError(f"bad port in {text!r}")
    return host, int(port) if port else None


def _sentinel_primary(url: str, options: dict[str, Any]) -> Redis:
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    addresses = [_host_port(item) for item in hosts.split(",") if item]
    if not addresses:
        raise ConfigurationError("a redis+sentinel:// URL needs at least one sentinel host:port")
    path = [part for part in parts.path.split("/") if part]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigurationError("a redis+sentinel:// URL ends in /<service name>[/<db>]")
    query = parse_qs(parts.query)
    # redis-py asks the sentinels in turn and moves on only when one fails: a sentinel
    # that accepts connections but never answers (a paused process, a full host) would
    # hold every new data connection forever. Each sentinel gets a share of a call's
    # deadline, so that the next one still answers within it, and no retries of its own:
    # asking the next sentinel is the retry.
    share = options["socket_connect_timeout"] / (len(addresses) + 1)
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": share,
        "socket_timeout": share,
        "retry": Retry(NoBackoff(), 0),
    }
    if "sentinel_password" in query:
        sentinel_options["password"] = query["sentinel_password"][0]
    data_options = {**options, "db": int(path[1]) if len(path) == 2 else 0}
    if username:
        data_options["username"] = unquote(username)
    if password:
        data_options["password"] = unquote(password)
    if parts.scheme.startswith("rediss"):
        data_options["ssl"] = True
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        [(host, port or 26379) for host, port in addresses],
        sentinel_kwargs=sentinel_options,
        **data_options,
    )
    primary: Redis = sentinel.master_for(unquote(path[0]))
    return primary
