"""Real server processes sharing a real Redis: what the WebSocket pool does on the hosts.

Every test runs against each ASGI server the ws pool can run (`daphne_asgi_server`):
daphne, and uvicorn with its sans-I/O websockets implementation.
"""

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from realtime import closecodes
from testing import free_port, wait_for_port

APP = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.redis, pytest.mark.django_db]


# The servers as the daphne@ unit starts them (systemd/daphne@.service.j2), on loopback.
SERVERS = {
    "daphne": ["-m", "daphne", "-b", "127.0.0.1", "-p", "{port}"],
    "uvicorn": [
        "-m",
        "uvicorn",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--ws",
        "websockets-sansio",
        "--ws-per-message-deflate",
        "false",
        "--lifespan",
        "off",
        "--no-access-log",
        "--log-level",
        "warning",
    ],
}
# What each server logs when the application raises.
APP_EXCEPTION = {"daphne": "Exception inside application", "uvicorn": "Exception in ASGI application"}
# How each ends on SIGTERM once shut down cleanly: uvicorn raises the signal it caught again,
# which systemd counts as a clean stop as it does exit status 0.
CLEAN_STOP = {"daphne": 0, "uvicorn": -signal.SIGTERM}


class Server:
    def __init__(self, kind: str, env: dict, logdir: Path):
        self.kind, self.env, self.port, self.logdir = kind, env, free_port(), logdir
        self.process: subprocess.Popen | None = None

    @property
    def log(self) -> str:
        return (self.logdir / f"{self.kind}-{self.port}.log").read_text()

    def start(self) -> "Server":
        log = open(self.logdir / f"{self.kind}-{self.port}.log", "ab")
        argv = [arg.format(port=self.port) for arg in SERVERS[self.kind]]
        self.process = subprocess.Popen(
            [sys.executable, *argv, "config.asgi:application"],
            cwd=APP,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, timeout=30)
        return self

    def crash(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            return response.read().decode()

    def readyz(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=10) as response:
            return json.loads(response.read())


def manage(env: dict, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=APP, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


MAKE_SESSION = """
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.auth import SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY
user, _ = get_user_model().objects.get_or_create(username="{name}")
s = SessionStore()
s[SESSION_KEY] = str(user.pk)
s[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
s[HASH_SESSION_KEY] = user.get_session_auth_hash()
s.create()
print(s.session_key)
"""


@pytest.fixture(scope="module", params=list(SERVERS))
def pool(request, redis_server, tmp_path_factory):
    """Two server processes, one SQLite file, one Redis; sessions for alice, bob, carol, dave and erin."""
    redis_server.cli("FLUSHALL")
    workdir = tmp_path_factory.mktemp("pool")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_", "CHANNEL_"))},
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_SECRET_KEY": "pool-test-secret-key-0123456789abcdefghijklmnop",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
        "REDIS_URL": redis_server.url,
        "DJANGO_SECURE_COOKIES": "0",
        "DJANGO_BEHIND_PROXY": "0",
        "WS_CONNECTION_SLOT_TTL": "3",
        "WS_STATE_REFRESH_SECONDS": "1",
        "WS_MAX_MESSAGE_BYTES": "1024",
        "LOG_LEVEL": "WARNING",
    }
    manage(env, "migrate", "--noinput")
    sessions = {
        name: manage(env, "shell", "-c", MAKE_SESSION.format(name=name)).splitlines()[-1]
        for name in ("alice", "bob", "carol", "dave", "erin")
    }
    kind = request.param
    processes = [Server(kind, env, workdir).start(), Server(kind, env, workdir).start()]
    yield {"env": env, "sessions": sessions, "a": processes[0], "b": processes[1], "kind": kind}
    for process in processes:
        process.stop()


def open_socket(pool, process: Server, user: str, path: str = "/ws/notifications/"):
    return ws_connect(
        f"ws://127.0.0.1:{process.port}{path}",
        origin="http://127.0.0.1",
        additional_headers={"Cookie": f"sessionid={pool['sessions'][user]}"},
        open_timeout=5,
    )


async def test_a_notification_from_sync_code_reaches_sockets_on_both_processes(pool):
    async with open_socket(pool, pool["a"], "alice") as on_a, open_socket(pool, pool["b"], "alice") as on_b:
        await asyncio.to_thread(manage, pool["env"], "notify", "alice", "cross-process hello")
        for ws in (on_a, on_b):
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert message["type"] == "notification"
            assert message["message"] == "cross-process hello"


async def test_each_process_serves_its_own_connection_gauge(pool):
    async with (
        open_socket(pool, pool["a"], "carol") as a1,
        open_socket(pool, pool["a"], "carol", "/ws/live/") as a2,
        open_socket(pool, pool["b"], "carol") as b1,
    ):
        for ws in (a1, a2, b1):
            await ws.send('{"type": "ping"}')
            await asyncio.wait_for(ws.recv(), 5)
        metrics_a = await asyncio.to_thread(pool["a"].metrics)
        metrics_b = await asyncio.to_thread(pool["b"].metrics)
    assert 'websocket_connections{consumer="notifications"} 1.0' in metrics_a
    assert 'websocket_connections{consumer="live"} 1.0' in metrics_a
    assert 'websocket_connections{consumer="notifications"} 1.0' in metrics_b
    assert 'websocket_connections{consumer="live"}' not in metrics_b


async def test_limit_holds_across_processes_and_a_crashed_process_frees_its_slots(pool):
    held = [
        await open_socket(pool, pool["a"], "bob"),
        await open_socket(pool, pool["a"], "bob"),
        await open_socket(pool, pool["b"], "bob"),
    ]
    try:
        fourth = await open_socket(pool, pool["b"], "bob")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(fourth.recv(), 5)
        assert closed.value.rcvd.code == 4429

        pool["a"].crash()  # two of bob's slots now belong to a dead process
        deadline = time.monotonic() + 15
        admitted = None
        while admitted is None and time.monotonic() < deadline:
            ws = await open_socket(pool, pool["b"], "bob")
            try:
                await ws.send('{"type": "ping"}')
                if json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}:
                    admitted = ws
            except ConnectionClosed:
                await asyncio.sleep(0.5)
        assert admitted is not None, "slots of the crashed process never expired"
        await admitted.close()
    finally:
        for ws in held:
            with contextlib.suppress(Exception):
                await ws.close()
        pool["a"].start()


async def test_no_per_message_compression_is_negotiated(pool):
    """A broadcast's frame is encoded once per process and written to every socket as it is: neither server
    takes up the permessage-deflate a client offers (websockets' client offers it, as browsers do)."""
    async with open_socket(pool, pool["b"], "carol", "/ws/live/") as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None


async def test_anonymous_and_cross_origin_handshakes_are_refused_by_a_real_server(pool):
    with pytest.raises(InvalidStatus) as anonymous:
        await ws_connect(f"ws://127.0.0.1:{pool['b'].port}/ws/notifications/", origin="http://127.0.0.1")
    assert anonymous.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as foreign:
        await ws_connect(f"ws://127.0.0.1:{pool['b'].port}/ws/live/", origin="https://evil.example")
    assert foreign.value.response.status_code == 403


async def test_an_idle_socket_outlives_the_redis_timeouts_and_still_receives(pool):
    """Idle far longer than the socket timeout (3 s) and the blocking read: the socket still receives."""
    async with open_socket(pool, pool["b"], "carol") as ws:
        await asyncio.sleep(16)
        await asyncio.to_thread(manage, pool["env"], "notify", "carol", "after a long silence")
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert message["message"] == "after a long silence"
    assert "TimeoutError" not in pool["b"].log


def gauge(metrics: str, consumer: str) -> float:
    match = re.search(rf'^websocket_connections{{consumer="{consumer}"}} (\S+)$', metrics, re.M)
    return float(match.group(1)) if match else 0.0


def counter(metrics: str, name: str, consumer: str) -> float:
    match = re.search(rf'^{name}_total{{consumer="{consumer}"}} (\S+)$', metrics, re.M)
    return float(match.group(1)) if match else 0.0


async def test_oversized_frames_close_with_4009_and_give_back_every_slot(pool):
    """Daphne refuses to send 1009 from an application: the close (4009) must not kill the consumer."""
    for _ in range(10):
        async with open_socket(pool, pool["b"], "dave", "/ws/orders/") as ws:
            await ws.send(json.dumps({"order_id": 1, "pad": "x" * 2000}))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd.code == closecodes.MESSAGE_TOO_BIG
    # Slots given back at once: the limit (3) admits three new sockets, none refused with 4429.
    sockets = [await open_socket(pool, pool["b"], "dave", "/ws/orders/") for _ in range(3)]
    try:
        for ws in sockets:
            await ws.send('{"type": "ping"}')
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}
        assert gauge(await asyncio.to_thread(pool["b"].metrics), "orders") == 3
    finally:
        for ws in sockets:
            await ws.close()
    deadline = time.monotonic() + 5
    while gauge(await asyncio.to_thread(pool["b"].metrics), "orders") != 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert gauge(await asyncio.to_thread(pool["b"].metrics), "orders") == 0
    log = pool["b"].log
    assert "invalid close code" not in log
    assert APP_EXCEPTION[pool["kind"]] not in log


def blocked_readers(redis_server) -> int:
    """Redis clients inside a blocking read of a channel (BZPOPMIN): a process's channel readers."""
    return sum(" cmd=bzpopmin " in f" {line} " for line in redis_server.cli("CLIENT", "LIST").splitlines())


async def test_closed_sockets_leave_no_channel_reader_behind(pool, redis_server):
    """Each closing socket's consumer cancels its read of the process's channel and ends.

    A dropped cancellation (config/redis.py) left the read going on, one blocking
    read after another, until daphne cancelled the consumer 10 s later, or for
    good when that cancellation was dropped too.
    """
    endpoints = [(user, path) for user in ("alice", "bob", "carol") for path in ("/ws/notifications/", "/ws/orders/")]
    for _ in range(3):
        sockets = [await open_socket(pool, pool["b"], user, path) for user, path in endpoints]
        for ws in sockets:
            await ws.send('{"type": "ping"}')
            await asyncio.wait_for(ws.recv(), 5)
        # One after another and all at once: reads are cancelled while others start.
        await sockets[0].close()
        await asyncio.gather(*(ws.close() for ws in sockets[1:]))
    # No reader may be left: three looks in a row, across more than one 1 s blocking read.
    deadline, quiet = time.monotonic() + 6, 0
    while quiet < 3 and time.monotonic() < deadline:
        quiet = quiet + 1 if blocked_readers(redis_server) == 0 else 0
        await asyncio.sleep(0.5)
    assert quiet == 3, f"{blocked_readers(redis_server)} channel reads still going on with every socket closed"


async def test_sockets_heal_their_memberships_after_redis_lost_everything(pool, redis_server):
    """A master restarted empty: open sockets re-join their groups within WS_STATE_REFRESH_SECONDS (1 s here)."""
    before = counter(await asyncio.to_thread(pool["a"].metrics), "websocket_state_lost", "notifications")
    async with open_socket(pool, pool["a"], "erin") as ws:
        await ws.send('{"type": "ping"}')
        await asyncio.wait_for(ws.recv(), 5)
        redis_server.cli("FLUSHALL")
        deadline = time.monotonic() + 10
        received = None
        while received is None and time.monotonic() < deadline:
            await asyncio.to_thread(manage, pool["env"], "notify", "erin", "after the wipe")
            with contextlib.suppress(TimeoutError):
                received = json.loads(await asyncio.wait_for(ws.recv(), 1))
        assert received is not None, "the socket never re-joined its group"
        assert received["message"] == "after the wipe"
        after = counter(await asyncio.to_thread(pool["a"].metrics), "websocket_state_lost", "notifications")
        assert after == before + 1


async def test_a_stopping_process_closes_every_socket_with_4001_gives_back_its_slots_and_exits(pool, redis_server):
    """SIGUSR1 (the daphne unit's ExecStop): every socket is told to go, its state is given back, the process stops."""
    erin = "from django.contrib.auth.models import User; print(User.objects.get(username='erin').pk)"
    slots = f"wslimit:notifications:{manage(pool['env'], 'shell', '-c', erin).splitlines()[-1]}"
    stopping = Server(pool["kind"], pool["env"], pool["a"].logdir).start()
    try:
        sockets = [await open_socket(pool, stopping, "erin") for _ in range(3)]
        sockets += [await open_socket(pool, stopping, "erin", "/ws/live/") for _ in range(2)]
        for ws in sockets:
            await ws.send('{"type": "ping"}')
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}
        assert redis_server.cli("ZCARD", slots) == "3"

        stopping.process.send_signal(signal.SIGUSR1)
        codes = []
        for ws in sockets:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            codes.append(closed.value.rcvd.code if closed.value.rcvd else 1006)
        assert codes == [closecodes.GOING_AWAY] * 5
        # It stops by itself, cleanly, having given the slots back (not let them lapse).
        assert await asyncio.to_thread(stopping.process.wait, 10) == CLEAN_STOP[pool["kind"]]
        assert redis_server.cli("ZCARD", slots) == "0"
        assert "draining: closing 5 sockets with 4001" in stopping.log
        assert APP_EXCEPTION[pool["kind"]] not in stopping.log
        # The user's full limit at once on another process: nothing of the stopped one is held.
        async with open_socket(pool, pool["b"], "erin") as ws:
            await ws.send('{"type": "ping"}')
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}
    finally:
        stopping.stop()


async def test_readiness_answers_at_once_under_many_idle_sockets(pool):
    """The channel-layer round trip of /readyz must not queue behind every idle socket's blocking read."""
    url = f"ws://127.0.0.1:{pool['b'].port}/ws/live/"
    sockets = [await ws_connect(url, origin="http://127.0.0.1", open_timeout=5) for _ in range(20)]
    try:
        for ws in sockets:
            await ws.send('{"type": "ping"}')
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}
        for _ in range(3):
            body = await asyncio.to_thread(pool["b"].readyz)
            assert body["checks"]["channel_layer"]["ok"], body
            assert body["checks"]["channel_layer"]["latency_ms"] < 1000, body
    finally:
        for ws in sockets:
            await ws.close()
