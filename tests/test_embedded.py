"""The embedded Valkey server: starts on a free port or a unix socket, stops cleanly."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from cached_sessions import EmbeddedServer, RedisSessions


def answers(server_url: str) -> bool:
    if server_url.startswith("unix://"):
        family, address = socket.AF_UNIX, server_url.removeprefix("unix://")
        target: object = address
    else:
        host_port = server_url.removeprefix("redis://").split("/")[0]
        host, port = host_port.split(":")
        family, target = socket.AF_INET, (host, int(port))
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(target)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.mark.parametrize("unix_socket", [False, True], ids=["tcp", "unix"])
def test_embedded_server_starts_and_stops(unix_socket: bool) -> None:
    server = EmbeddedServer(unix_socket=unix_socket)
    url = server.start()
    assert answers(url)
    assert server.running
    socket_path = url.removeprefix("unix://") if unix_socket else None
    server.stop()
    assert not answers(url)
    assert not server.running
    if socket_path is not None:
        assert not os.path.exists(socket_path)
    server.stop()  # a second stop does nothing


async def test_store_without_a_url_runs_its_own_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    rs = RedisSessions(wipe=0)
    token = (await rs.create(app="demo", id="u", ip="127.0.0.1"))["token"]
    assert (await rs.get(app="demo", token=token)) is not None
    embedded = rs._embedded
    assert embedded is not None
    url = embedded.url
    assert "embedded" in repr(rs)
    await rs.aclose()
    assert not answers(url)


async def test_store_uses_redis_url_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, server: object
) -> None:
    monkeypatch.setenv("REDIS_URL", server.url)  # type: ignore[attr-defined]
    async with RedisSessions(wipe=0) as rs:
        assert rs._embedded is None
        assert await rs.ping() == "PONG"


def test_stop_removes_the_servers_data_folder() -> None:
    import redis as sync_redis

    embedded = EmbeddedServer()
    url = embedded.start()
    client = sync_redis.Redis.from_url(url, decode_responses=True)
    folder = Path(client.config_get("dir")["dir"])
    client.close()
    assert folder.is_dir()
    embedded.stop()
    assert not folder.exists()
