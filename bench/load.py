"""The load client: WebSockets and HTTP requests through nginx, and what came back when.

Every figure is taken on the client's clock, which is the replicas' clock too
(containers share this machine's kernel): a tick's latency is its receipt here
minus the `ts` the publisher stamped on it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import re
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bench.pools import cpu_by_pid, cpu_spent


@dataclass
class Site:
    """The stack's front door as the client sees it: nginx's URL and certificate, the notification API's token,
    and the logged-in user a socket opened with `cookie` is (bench.run.notify gives each socket its own)."""

    base: str
    cafile: str  # nginx's certificate
    session: str = ""
    user_id: int = 0
    token: str = ""

    @property
    def ws(self) -> str:
        return "wss://" + self.base.removeprefix("https://")

    @property
    def ssl(self) -> ssl.SSLContext:
        # Built where it is used: a Site crosses to the client's worker processes, a context cannot.
        context = self.__dict__.get("_ssl")
        if context is None:
            context = self.__dict__["_ssl"] = ssl.create_default_context(cafile=self.cafile)
        return context

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_ssl"}


def login_attempt(client: httpx.Client, username: str, password: str) -> httpx.Response:
    """One try of the login form (its page fetched for the CSRF token), on a client whose base_url is the site."""
    form = client.get("/accounts/login/")
    form.raise_for_status()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    return client.post(
        "/accounts/login/",
        headers={"Referer": str(client.base_url.join("/accounts/login/"))},
        data={"username": username, "password": password, "csrfmiddlewaretoken": token},
    )


def login(base: str, context: ssl.SSLContext, username: str, password: str) -> tuple[httpx.Client, int]:
    """A session logged in through the login form (CSRF included), and the user's id from the home page."""
    client = httpx.Client(base_url=base, verify=context, timeout=20)
    answer = login_attempt(client, username, password)
    if answer.status_code != 302:
        raise RuntimeError(f"login as {username} answered {answer.status_code}: {answer.text[:500]}")
    user_id = int(re.search(r'data-user-id="(\d+)"', client.get("/").text).group(1))
    return client, user_id


# Django's shell on an http host: users PREFIX0... made if missing, each with a new logged-in session.
SESSIONS_FOR = """
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
for n in range({count}):
    user, _ = get_user_model().objects.get_or_create(username=f"{prefix}{{n}}")
    s = SessionStore()
    s[SESSION_KEY], s[BACKEND_SESSION_KEY] = str(user.pk), "django.contrib.auth.backends.ModelBackend"
    s[HASH_SESSION_KEY] = user.get_session_auth_hash()
    s.create()
    print("session", s.session_key, user.pk)
"""


def made_users(run, prefix: str, count: int) -> list[tuple[str, int]]:
    """(session cookie, user id) of `count` users `prefix`0... (made if missing), logged in; `run(command)` runs
    a shell command on an http host and returns its output."""
    script = base64.b64encode(SESSIONS_FOR.format(prefix=prefix, count=count).encode()).decode()
    output = run(f"echo {script} | base64 -d | channels-manage shell --no-imports")
    users = [(session, int(pk)) for session, pk in re.findall(r"^session (\S+) (\d+)$", output, re.M)]
    if len(users) != count:
        raise RuntimeError(f"{count} users {prefix}... asked, {len(users)} made: {output[-2000:]}")
    return users


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Window:
    """What one measured step received: latencies (s) of the frames it was waiting for."""

    marker: str
    latencies: list[float] = field(default_factory=list)
    stamps: dict[str, float] = field(default_factory=dict)  # a tick's `ts` as seconds, parsed once

    def tick(self, update: dict, now: float) -> None:
        if update.get("symbol") != self.marker:
            return
        ts = update["ts"]
        sent = self.stamps.get(ts)
        if sent is None:
            sent = self.stamps[ts] = datetime.fromisoformat(ts).timestamp()
        self.latencies.append(now - sent)

    def summary(self, expected: int) -> dict:
        return {
            "received": len(self.latencies),
            "lost": expected - len(self.latencies),
            "p50_ms": _ms(percentile(self.latencies, 0.50)),
            "p95_ms": _ms(percentile(self.latencies, 0.95)),
            "p99_ms": _ms(percentile(self.latencies, 0.99)),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class Sockets:
    """WebSockets on one path, spread over the client's source addresses (nginx limits each address).

    Every frame received goes to `on_frame(frame, now)`; a socket that closes is counted, not reopened.
    """

    def __init__(self, site: Site, path: str, sources: list[str | None], *, cookie: bool = False):
        self.site, self.path, self.sources, self.cookie = site, path, sources, cookie
        self.readers: list[asyncio.Task] = []
        self.sockets: list = []
        self.closed = 0
        self.refused: dict[str, int] = {}
        self.on_frame = lambda frame, now: None

    def __len__(self) -> int:
        return len(self.sockets)

    async def _open(self, index: int, gate: asyncio.Semaphore):
        headers = {"Cookie": f"sessionid={self.site.session}"} if self.cookie else {}
        source = self.sources[index % len(self.sources)]
        async with gate:
            return await connect(
                self.site.ws + self.path,
                ssl=self.site.ssl,
                origin=self.site.base,
                additional_headers=headers,
                open_timeout=30,
                max_size=None,
                **({"local_addr": (source, 0)} if source else {}),
            )

    async def grow(self, count: int, at_once: int = 50) -> None:
        """Try to open sockets up to `count` (several handshakes in flight, not thousands); refusals counted."""
        gate = asyncio.Semaphore(at_once)
        tries = range(len(self.sockets) + sum(self.refused.values()), count + sum(self.refused.values()))
        opened = await asyncio.gather(*(self._open(i, gate) for i in tries), return_exceptions=True)
        for ws in opened:
            if isinstance(ws, BaseException):  # refused (an HTTP status) or failed: counted, not retried
                reason = str(ws.response.status_code) if isinstance(ws, InvalidStatus) else type(ws).__name__
                self.refused[reason] = self.refused.get(reason, 0) + 1
                continue
            self.sockets.append(ws)
            self.readers.append(asyncio.create_task(self._read(ws)))

    async def _read(self, ws) -> None:
        try:
            async for frame in ws:
                self.on_frame(frame, time.time())
        except ConnectionClosed:
            pass
        self.closed += 1

    async def close(self, batch: int = 50, pause: float = 0.1) -> None:
        """Close every socket, `batch` at a time: users leave over time, not all in the same millisecond.

        (A thousand closes at once is a fault of its own, not what a step measures: the
        pool's cleanup of a burst that size is a drill's subject.)
        """
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        for start in range(0, len(self.sockets), batch):
            await asyncio.gather(*(ws.close() for ws in self.sockets[start : start + batch]), return_exceptions=True)
            await asyncio.sleep(pause)
        self.sockets, self.readers, self.closed, self.refused = [], [], 0, {}


class Fleet:
    """WebSockets held by several client processes, each reading its share of every broadcast.

    One Python process reading a broadcast's burst of thousands of TLS frames
    takes longer than the servers take to send them: the client would be the
    bound it measures. Each worker holds its share of the sockets on its share
    of the source addresses and keeps its own window of latencies; the
    latencies are gathered when a step ends.
    """

    def __init__(self, site: Site, path: str, sources: list[str | None], processes: int | None = None):
        count = processes or os.cpu_count() or 1
        spawn = multiprocessing.get_context("spawn")
        self.workers = []
        for i in range(count):
            share = sources[i::count] if len(sources) >= count else sources
            parent, child = spawn.Pipe()
            process = spawn.Process(target=_worker, args=(child, site, path, share), daemon=True)
            process.start()
            self.workers.append((process, parent))
        self.opened, self.closed, self.refused = 0, 0, {}

    def __len__(self) -> int:
        return self.opened

    def pids(self) -> list[int]:
        return [process.pid for process, _ in self.workers]

    def _ask(self, commands: list[tuple]) -> list:
        for (_, conn), command in zip(self.workers, commands, strict=True):
            conn.send(command)
        return [conn.recv() for _, conn in self.workers]

    async def _all(self, command: str, arg=None) -> list:
        return await asyncio.to_thread(self._ask, [(command, arg)] * len(self.workers))

    def _count(self, replies: list[tuple]) -> None:
        self.opened = sum(r[0] for r in replies)
        self.closed = sum(r[1] for r in replies)
        self.refused = {}
        for reply in replies:
            for reason, n in reply[2].items():
                self.refused[reason] = self.refused.get(reason, 0) + n

    async def grow(self, count: int) -> None:
        n = len(self.workers)
        shares = [("grow", count // n + (i < count % n)) for i in range(n)]
        self._count(await asyncio.to_thread(self._ask, shares))

    async def window(self, marker: str) -> None:
        await self._all("window", marker)

    async def received(self) -> int:
        return sum(await self._all("received"))

    async def take(self) -> list[float]:
        """The window's latencies from every worker (the window ends); sockets closed meanwhile counted."""
        replies = await self._all("take")
        self._count([r[1:] for r in replies])
        return [latency for reply in replies for latency in reply[0]]

    async def close(self) -> None:
        """Every socket closed (gently, as Sockets.close), then the workers stopped."""
        try:
            await self._all("close")
        finally:
            for process, conn in self.workers:
                with contextlib.suppress(OSError):
                    conn.send(("exit", None))
                process.join(10)
                if process.is_alive():
                    process.kill()
            self.opened = 0


def _worker(conn, site: Site, path: str, sources: list[str | None]) -> None:
    asyncio.run(_work(conn, site, path, sources))


async def _work(conn, site: Site, path: str, sources: list[str | None]) -> None:
    """A Fleet's worker: answers each command from the pipe, reading its sockets meanwhile."""
    sockets, current = Sockets(site, path, sources), {"window": None}
    sockets.on_frame = live_frames(lambda: current["window"])

    def counts() -> tuple:
        return len(sockets), sockets.closed, dict(sockets.refused)

    while True:
        command, arg = await asyncio.to_thread(conn.recv)
        if command == "exit":
            return
        if command == "grow":
            await sockets.grow(arg)
            reply = counts()
        elif command == "window":
            current["window"], reply = Window(arg), None
        elif command == "received":
            reply = len(current["window"].latencies) if current["window"] else 0
        elif command == "take":
            window, current["window"] = current["window"], None
            reply = (window.latencies if window else [], *counts())
        elif command == "close":
            await sockets.close()
            reply = None
        else:
            reply = ValueError(f"unknown command {command!r}")
        conn.send(reply)


def live_frames(window_of) -> callable:
    """on_frame for /ws/live/: each update of a batch goes to the current window."""

    def on_frame(frame, now: float) -> None:
        window = window_of()
        if window is None:
            return
        message = json.loads(frame)
        for update in message.get("updates", ()):
            window.tick(update, now)

    return on_frame


class Requests:
    """Requests at a steady rate, spread over the client's source addresses; status of each and when its answer came.

    Spread, because the raw baseline's notify endpoint sits under /ws/, where nginx
    limits requests per address (nginx_ws_handshake_rate): from one address the raw
    side would measure that limit. Both sides' requests take the same path.
    """

    def __init__(self, site: Site, sources: list[str]):
        self.site, self.sources = site, sources or [None]

    async def run(self, rate: float, count: int, request) -> tuple[dict[int, float], dict]:
        """`request(client, i)` `count` times at `rate`/s: (sent time by i, answers by status)."""
        sent: dict[int, float] = {}
        statuses: dict = {}

        async def one(client, i: int) -> None:
            sent[i] = time.time()
            try:
                status = (await request(client, i)).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            statuses[status] = statuses.get(status, 0) + 1

        limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=self.site.base,
                        transport=httpx.AsyncHTTPTransport(verify=self.site.ssl, local_address=source, limits=limits),
                        timeout=10,
                    )
                )
                for source in self.sources
            ]
            tasks, start = [], time.monotonic()
            for i in range(count):
                tasks.append(asyncio.create_task(one(clients[i % len(clients)], i)))
                await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
            await asyncio.gather(*tasks)
        return sent, statuses


@contextlib.contextmanager
def client_cpu(workers: list[int] = ()):
    """The client's CPU seconds over the block, its worker processes' included: {"seconds": ...} once it ends."""
    spent = {}
    started, workers_before = time.process_time(), cpu_by_pid(workers)
    try:
        yield spent
    finally:
        spent["seconds"] = time.process_time() - started + cpu_spent(workers_before, cpu_by_pid(workers))
