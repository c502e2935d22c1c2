"""Helpers the app's tests share: real Redis servers and WebSocket clients."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from config.asgi import application

ORIGIN = (b"origin", b"http://testserver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class RedisServer:
    """A throw-away redis-server (or sentinel) on a free loopback port."""

    port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    sentinel: bool = False
    process: subprocess.Popen | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="redis-test-")))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (./stack test installs it)")
        conf = self.workdir / ("sentinel.conf" if self.sentinel else "redis.conf")
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.workdir}", 'save ""', "appendonly no"]
        conf.write_text("\n".join(lines + self.extra) + "\n")
        argv = [binary, str(conf)] + (["--sentinel"] if self.sentinel else [])
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()


def url_spec(url: str) -> dict:
    """A Redis spec (as settings.REDIS holds it) for one server at url."""
    return {"mode": "url", "url": url, "socket_timeout": 10.0, "retry_seconds": 20.0}


def redis_settings(spec: dict) -> dict:
    """settings overrides that put the channel layer and the app's own Redis clients on spec."""
    from config.redis import channel_layer

    return {"REDIS": spec, "CHANNEL_LAYERS": {"default": channel_layer(spec, capacity=1500, expiry=10)}}


def session_headers(user) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    return [ORIGIN, (b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode())]


async def connect(path: str, headers: list[tuple[bytes, bytes]] | None = None):
    """(communicator, accepted, subprotocol_or_close_code) for a WebSocket to the app."""
    communicator = WebsocketCommunicator(application, path, headers=headers or [ORIGIN])
    accepted, detail = await communicator.connect()
    return communicator, accepted, detail
