"""How the app talks to Redis: one connection policy for the channel layer and
for the app's own clients (connection limit, readiness check).

These traps decide the values below (all seen on this stack):

* redis-py 8 defaults ``socket_timeout`` to 5 s, exactly channels_redis's 5 s
  blocking read (BZPOPMIN): an idle consumer's read times out, the error
  reaches the consumer and its WebSocket closes. The socket timeout must stay
  above ``BLOCKING_READ_SECONDS``.
* A master whose host vanished answers nothing, not even a reset: every
  command sent to it waits the whole socket timeout. With the layer's 5 s
  blocking read (hence a 10 s timeout) a process's read of its channel hung
  10 s after the loss, and messages expire after 10 s: they were lost. The
  blocking read is 1 s here (``FailoverAwareChannelLayer``), so the timeout
  can be 3 s and a dead master is noticed before Sentinel has even elected
  the next one.
* redis-py's clients retry 10 times by default; a sentinel client asked on a
  host that is gone then spent about 25 s before ``discover_master`` moved
  on to the next sentinel (every notification failed while the first
  sentinel listed was down). Sentinel clients here never retry and time out
  within a second: the next sentinel is asked instead.
* channels_redis hands each Redis error to the consumer, which then closes the
  socket. During a Sentinel failover the first command after it fails, and a
  blocked read on the demoted master is answered ``-UNBLOCKED``. Both must be
  retried on the new master, inside the connection, never seen by consumers.
* After a failover the old master may go on answering as a master for several
  seconds until Sentinel demotes it; pooled connections only ask Sentinel on
  connect, so a process would keep reading the old master while others write
  to the new one. Connections therefore re-check the master's address (at most
  once per MASTER_CHECK_SECONDS, before a command) and move when it moved.
* redis-py writes each command under ``asyncio.wait_for``, which on Python
  3.11 drops a cancellation that arrives as the write completes
  (redis/redis-py#2028). A consumer's read of its channel, cancelled as its
  socket closed, then went on reading, one blocking read after another: the
  consumer's end waited until something cancelled it again (daphne's close
  timeout, the test client's 1 s), and a second cancellation lost the same
  way left it reading forever. Every connection here raises such a dropped
  cancellation again after the write (``CancellationKeepingConnection``).
* With several shards (``hosts`` entries), channels_redis 4.3's ``send`` to a
  process's channel (``specific.abc!xyz``) picks the shard by the whole name,
  while the process reads from the shard of ``specific.abc!`` (as
  ``group_send`` writes): on a two-shard layer 8 of 20 direct sends were never
  read (the readiness check's round trip is one). The layer hashes the
  process's part of such a name only (``FailoverAwareChannelLayer.consistent_hash``).
* A call that answers a request (``POST /api/notifications/``) bounds its time
  (``NOTIFY_SEND_TIMEOUT``). While one shard fails over, every call that needs
  it held its gunicorn thread that long: with 15 of 16 users' sockets on the
  failing shard, the pool's threads were all waiting and the other shard's
  posts queued for up to 5.4 s. A shard on which a bounded call ran out of
  time is now paused for the process: bounded calls that need it are refused
  at once, but one every ``LAYER_SHARD_PAUSE``, which tries it
  (``FailoverAwareChannelLayer.bounded``).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import contextvars
import logging
import time
from dataclasses import dataclass, field

from channels_redis.core import RedisChannelLayer
from channels_redis.utils import _consistent_hash
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

log = logging.getLogger(__name__)

# The channel layer's blocking read of a process's channel (BZPOPMIN), seconds.
BLOCKING_READ_SECONDS = 1
# A sentinel that does not answer within this is skipped for the next one.
SENTINEL_TIMEOUT_SECONDS = 1.0
# How stale a connection's idea of the master may be before a command re-asks Sentinel.
MASTER_CHECK_SECONDS = 1.0


def connection_options(socket_timeout: float, retry_seconds: float) -> dict:
    """Keyword arguments for every Redis connection the app opens."""
    if socket_timeout <= BLOCKING_READ_SECONDS:
        raise ValueError(
            f"Redis socket timeout {socket_timeout}s must exceed the channel layer's "
            f"{BLOCKING_READ_SECONDS}s blocking read"
        )
    # Backoff 50 ms doubling to 1 s: retries spread over about retry_seconds,
    # long enough for Sentinel to elect and announce a new master.
    retries = max(1, int(retry_seconds) + 5)
    return {
        "socket_connect_timeout": 2,
        "socket_timeout": socket_timeout,
        "socket_keepalive": True,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        "retry_on_error": [ConnectionError, TimeoutError],
    }


def _is_unblocked(exc: ResponseError) -> bool:
    return str(exc).startswith("UNBLOCKED")


class CancellationKeepingConnection:
    """A connection whose command writes never drop their task's cancellation.

    A cancellation requested while the command was written and not raised
    (Python 3.11's ``wait_for``, see the module's docstring) is raised once the
    write returns. The command's reply will not be read: the connection closes.
    """

    async def send_packed_command(self, command, check_health=True):
        task = asyncio.current_task()
        requested = task.cancelling() if task is not None else 0
        await super().send_packed_command(command, check_health)
        if task is not None and task.cancelling() > requested:
            await self.disconnect(nowait=True)
            raise asyncio.CancelledError


class PlainConnection(CancellationKeepingConnection, Connection):
    pass


class PlainSSLConnection(CancellationKeepingConnection, SSLConnection):
    pass


class PlainUnixConnection(CancellationKeepingConnection, UnixDomainSocketConnection):
    pass


# What a Redis URL's scheme connects with (as redis-py chooses, with the fix above).
URL_CONNECTIONS = {"redis": PlainConnection, "rediss": PlainSSLConnection, "unix": PlainUnixConnection}


class FailoverAwareConnection(CancellationKeepingConnection, SentinelManagedConnection):
    """A Sentinel-managed connection that follows the master promptly.

    * Before a command, at most once per MASTER_CHECK_SECONDS, it asks Sentinel
      where the master is; if not where this connection points, it drops the
      connection and raises ConnectionError, which the retry policy answers
      by reconnecting to the new master.
    * Every reconnect asks Sentinel for the master: redis-py's own reconnect
      inside a command retry reuses the address it had, so retries after a
      failover went back to the old (or dead) master (redis/redis-py#3874).
    * redis-py already turns READONLY from a demoted master into a reconnect;
      ``-UNBLOCKED`` (the answer to a blocking command when its master becomes
      a replica) is a plain ResponseError and would reach the consumer, so it
      is turned into ConnectionError too.
    """

    _master_checked_at = 0.0
    _opening = False

    async def connect_to(self, address):
        # Only when a socket really opens, to the address Sentinel just named
        # (redis-py calls connect() before every command).
        self._master_checked_at = time.monotonic()
        self._opening = True
        try:
            await super().connect_to(address)
        finally:
            self._opening = False

    async def connect_check_health(self, check_health=True, retry_socket_connect=True):
        if self.is_connected or self._opening or not self.connection_pool.is_master:
            return await super().connect_check_health(check_health, retry_socket_connect)
        # A reconnect from inside a command: go through Sentinel, not the old address.
        await self.connect()

    async def send_packed_command(self, command, check_health=True):
        if (
            self.connection_pool.is_master
            and self.is_connected
            and time.monotonic() - self._master_checked_at > MASTER_CHECK_SECONDS
        ):
            self._master_checked_at = time.monotonic()
            # Also drops the pool's idle connections when the master moved.
            master = await self.connection_pool.get_master_address()
            if (self.host, self.port) != tuple(master):
                await self.disconnect()
                raise ConnectionError(f"master moved to {master[0]}:{master[1]}")
        await super().send_packed_command(command, check_health)

    async def read_response(self, *args, **kwargs):
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if _is_unblocked(exc) and self.connection_pool.is_master:
                await self.disconnect()
                raise ConnectionError("blocked read interrupted by a master change") from exc
            raise


class FailoverAwareSSLConnection(FailoverAwareConnection, SentinelManagedSSLConnection):
    pass


def shard_specs(spec: dict) -> list[dict]:
    """The single-master specs of a Redis spec from settings, one per shard.

    A Sentinel spec names its shards' masters in ``master_names`` (every shard
    watched by the same sentinels), a URL spec its servers in ``urls``. The
    channel layer shards over them in this order, so the order is part of the
    data's layout: reordering, adding or removing one moves groups and channels
    to other shards.
    """
    for many, one in (("master_names", "master_name"), ("urls", "url")):
        if spec.get(many):
            single = {key: value for key, value in spec.items() if key != many}
            return [{**single, one: value} for value in spec[many]]
    return [spec]


def shard_of(key: str, shards: int) -> int:
    """Which shard holds a key: the channel layer's own hash, so the app's keys spread as its groups do."""
    return _consistent_hash(key, shards)


def layer_host(spec: dict) -> dict:
    """One channels_redis ``hosts`` entry for a single-master spec (one of ``shard_specs``).

    All of a master's sentinels go in ONE entry: several entries would shard the
    layer over several (here: identical) masters.
    """
    options = connection_options(spec["socket_timeout"], spec["retry_seconds"])
    if spec["mode"] == "url":
        scheme = spec["url"].partition("://")[0]
        return {"address": spec["url"], "connection_class": URL_CONNECTIONS[scheme], **options}
    sentinel_kwargs = {
        "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
        "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
        "retry": Retry(NoBackoff(), 0),
    }
    if spec.get("sentinel_password"):
        sentinel_kwargs["password"] = spec["sentinel_password"]
    if spec.get("tls"):
        sentinel_kwargs["ssl"] = True
    host = {
        "sentinels": spec["sentinels"],
        "master_name": spec["master_name"],
        "db": spec.get("db", 0),
        "sentinel_kwargs": sentinel_kwargs,
        "connection_class": FailoverAwareSSLConnection if spec.get("tls") else FailoverAwareConnection,
        **options,
    }
    if spec.get("password"):
        host["password"] = spec["password"]
    if spec.get("tls"):
        host["ssl"] = True
    return host


# How many channels the last group_send in this task addressed (realtime.layer reads it).
GROUP_SEND_TARGETS: contextvars.ContextVar[int | None] = contextvars.ContextVar("group_send_targets", default=None)


class ShardPaused(builtins.TimeoutError):
    """A bounded call refused at once: a shard it needs is paused (FailoverAwareChannelLayer.bounded)."""


@dataclass
class _Bounded:
    """One bounded call: its time, its shards' pause, the shards it asked for, and the one it asked for last
    (what it waits on)."""

    seconds: float
    pause: float
    shards: list[int] = field(default_factory=list)
    waiting_on: int | None = None


# The bounded call running in this task, if any.
_BOUNDED: contextvars.ContextVar[_Bounded | None] = contextvars.ContextVar("bounded_layer_call", default=None)


class FailoverAwareChannelLayer(RedisChannelLayer):
    """channels_redis's layer with a short blocking read (see the module's docstring),
    telling how many channels each group_send addressed (GROUP_SEND_TARGETS),
    adding many channels to a group in one round trip (the state keeper's renewals),
    and failing fast, for the calls that ask it (``bounded``), on a shard that just
    did not answer in time."""

    brpop_timeout = BLOCKING_READ_SECONDS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Shard -> until when (time.monotonic()) this process's bounded calls are refused it.
        self.paused_until: dict[int, float] = {}

    def connection(self, index):
        call = _BOUNDED.get()
        if call is not None:
            call.waiting_on = index
        # A shard is checked the first time a call asks for it: group_send asks for the group's
        # shard again when it writes to its members, and a call trying a shard must not refuse itself.
        if call is not None and index not in call.shards:
            until = self.paused_until.get(index)
            if until is not None:
                now = time.monotonic()
                if now < until:
                    raise ShardPaused(f"channel layer shard {index} paused for {until - now:.1f} s more")
                # The pause is over: this call tries the shard, and the next try is let through a pause
                # later, whether this one has its answer by then or not (a failover may complete meanwhile).
                self.paused_until[index] = now + call.pause
            call.shards.append(index)
        return super().connection(index)

    @contextlib.asynccontextmanager
    async def bounded(self, seconds: float, pause: float):
        """The layer's calls inside take at most `seconds` in all (then TimeoutError).

        When they run out of time waiting on a shard (a failover, a lost master), that shard is
        paused for this process: every bounded call that needs it is refused at once
        (ShardPaused, a TimeoutError), but one every `pause` seconds, which tries it. A failing
        shard then holds at most `seconds` / `pause` of the process's threads instead of all of
        them, calls for the other shards are served meanwhile, and a shard that answers again
        (its failover done) is tried within `pause`. A call that completes lifts the pause of
        every shard it used.
        """
        call = _Bounded(seconds, pause)
        token = _BOUNDED.set(call)
        try:
            async with asyncio.timeout(seconds):
                yield
        except builtins.TimeoutError as error:
            if call.waiting_on is not None and not isinstance(error, ShardPaused):
                shard = call.waiting_on
                self.paused_until[shard] = time.monotonic() + pause
                log.warning("channel layer shard %s did not answer within %s s: paused for %s s", shard, seconds, pause)
            raise
        else:
            for shard in call.shards:
                self.paused_until.pop(shard, None)
        finally:
            _BOUNDED.reset(token)

    def consistent_hash(self, value):
        # A process's channel lives on the shard its reader reads (see the module's docstring).
        # One shard: nothing to pick (group_send hashes every member; keep that path as it was).
        if self.ring_size > 1 and isinstance(value, str) and "!" in value:
            value = self.non_local_name(value)
        return super().consistent_hash(value)

    async def group_add_many(self, group: str, channels: list[str]) -> None:
        """group_add for many channels at once: one ZADD and one EXPIRE, where group_add costs both per channel."""
        assert self.require_valid_group_name(group), "Group name not valid"
        if not channels:
            return
        connection = self.connection(self.consistent_hash(group))
        key = self._group_key(group)
        await connection.zadd(key, dict.fromkeys(channels, time.time()))
        await connection.expire(key, self.group_expiry)

    def _map_channel_keys_to_connection(self, channel_names, message):
        # group_send calls this once, with the group's live members, before it
        # writes: the count costs no round trip (tests pin the hook: test_layer.py).
        GROUP_SEND_TARGETS.set(len(channel_names))
        return super()._map_channel_keys_to_connection(channel_names, message)


def channel_layer(spec: dict, **options) -> dict:
    """The CHANNEL_LAYERS entry for a Redis spec: channels_redis with one hosts entry per shard."""
    return {
        "BACKEND": "config.redis.FailoverAwareChannelLayer",
        "CONFIG": {"hosts": [layer_host(shard) for shard in shard_specs(spec)], **options},
    }


def parse_sentinels(value: list[str]) -> list[tuple[str, int]]:
    sentinels = []
    for item in value:
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"sentinel {item!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    return sentinels
