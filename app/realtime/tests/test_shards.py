"""A channel layer sharded over two real redis-servers: what lives where, and that every socket is still served."""

import asyncio
import signal

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from redis.exceptions import ConnectionError

from config.redis import ShardPaused, shard_of
from notifications.services import asend_notification
from ops.views import check_redis
from realtime import limits
from realtime.keeper import keeper
from testing import RedisServer, connect, redis_settings, session_headers, url_spec

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def second_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def sharded(redis_server, second_server, settings):
    servers = [redis_server, second_server]
    for server in servers:
        server.cli("FLUSHALL")
    # Retries within a second: the readiness test stops a server.
    spec = {**url_spec(redis_server.url), "urls": [server.url for server in servers], "retry_seconds": 1.0}
    for name, value in redis_settings(spec).items():
        setattr(settings, name, value)
    return servers


def keys(server, pattern: str) -> list[str]:
    return server.cli("--scan", "--pattern", pattern).split()


async def test_slots_live_on_the_shard_their_key_hashes_to_and_renew_across_both(sharded, settings, user):
    slots = limits.slots()
    held = [("notifications", user_id, f"socket-{user_id}") for user_id in range(1, 41)]
    for endpoint, user_id, member in held:
        assert await slots.acquire(endpoint, user_id, member)
    on_shard = [set(keys(server, "wslimit:*")) for server in sharded]
    assert all(on_shard), "forty users' slots all landed on one shard"
    for endpoint, user_id, _ in held:
        key = f"wslimit:{endpoint}:{user_id}"
        assert key in on_shard[shard_of(key, 2)]
    # One shard lost its state (a master restarted empty): only its slots are reported lost.
    sharded[1].cli("FLUSHALL")
    kept = await slots.renew(held)
    assert kept == [shard_of(f"wslimit:notifications:{user_id}", 2) == 0 for _, user_id, _ in held]


async def test_the_limit_holds_for_a_user_on_either_shard(sharded, settings):
    users = [await get_user_model().objects.acreate(username=f"shard-user-{n}") for n in range(20)]
    assert {shard_of(f"wslimit:notifications:{u.pk}", 2) for u in users} == {0, 1}
    for u in users:
        for n in range(settings.WS_MAX_CONNECTIONS_PER_USER):
            assert await limits.slots().acquire("notifications", u.pk, f"s{n}")
        assert not await limits.slots().acquire("notifications", u.pk, "one-too-many")


async def test_every_users_sockets_get_their_notifications_whichever_shard_holds_their_group(sharded):
    users = [await get_user_model().objects.acreate(username=f"notified-{n}") for n in range(20)]
    sockets = {}
    for u in users:
        headers = await sync_to_async(session_headers)(u)
        communicator, accepted, _ = await connect("/ws/notifications/", headers)
        assert accepted
        sockets[u.pk] = communicator
    groups = [keys(server, "asgi:group:notifications_*") for server in sharded]
    assert all(groups), f"twenty users' groups all on one shard: {groups}"
    for u in users:
        await asend_notification(u.pk, f"for {u.pk}")
    for user_id, communicator in sockets.items():
        assert (await communicator.receive_json_from(5))["message"] == f"for {user_id}"
        await communicator.disconnect()


async def test_readiness_asks_every_shard(sharded):
    assert await check_redis() == {"roles": ["master", "master"]}
    sharded[1].stop()
    try:
        with pytest.raises(ConnectionError):
            await check_redis()
    finally:
        sharded[1].start()


async def test_a_message_sent_to_a_process_channel_is_read_from_the_shard_its_reader_reads(sharded):
    """channels_redis 4.3 alone lost 8 of 20 of these on two shards (config/redis.py's docstring)."""
    layer = get_channel_layer()
    channels = [await layer.new_channel() for _ in range(20)]
    for number, channel in enumerate(channels):
        await layer.send(channel, {"type": "direct.message", "number": number})
    for number, channel in enumerate(channels):
        async with asyncio.timeout(2):
            assert (await layer.receive(channel))["number"] == number


async def test_with_one_shard_down_the_others_slots_and_groups_are_still_renewed(sharded, settings):
    """The process's renewal goes on for the shards that answer: a shard down longer than the
    layer's group expiry must not deafen the sockets whose state lives elsewhere. The shard
    stopped is the one the process's inbox is not on (its sockets' reads would fail otherwise,
    after this fixture's one second of retries)."""
    settings.WS_STATE_REFRESH_SECONDS = 3600  # the test renews by hand
    users = [await get_user_model().objects.acreate(username=f"renewed-{n}") for n in range(20)]
    sockets = {}
    for u in users:
        communicator, accepted, _ = await connect("/ws/notifications/", await sync_to_async(session_headers)(u))
        assert accepted
        sockets[u.pk] = communicator
    layer = get_channel_layer()
    up = layer.consistent_hash(await layer.new_channel())
    down = 1 - up
    on_up = [pk for pk in sockets if layer.consistent_hash(f"notifications_{pk}") == up]
    assert on_up
    assert len(on_up) < len(sockets)
    # One shard lost its state; the other is gone.
    sharded[up].cli("FLUSHALL")
    sharded[down].stop()
    try:
        async with asyncio.timeout(15):
            await keeper().renew()
        for pk in on_up:
            assert sharded[up].cli("ZCARD", layer._group_key(f"notifications_{pk}").decode()) == "1"
        kept = await limits.slots().renew([("notifications", pk, "nobody") for pk in sockets])
        # Answered where the shard is up (nobody holds those), unknown where it is down.
        assert kept == [False if shard_of(f"wslimit:notifications:{pk}", 2) == up else None for pk in sockets]
    finally:
        sharded[down].start()
        for communicator in sockets.values():
            await communicator.disconnect()


async def test_a_shard_that_stops_answering_is_refused_at_once_until_it_answers_again(sharded, settings):
    """A notification's send is bounded (NOTIFY_SEND_TIMEOUT); the shard it ran out of time on is
    refused at once to the process's next ones (ShardPaused), while the other shard is served;
    one send every LAYER_SHARD_PAUSE tries it, the others refused meanwhile, and a try goes
    ahead a pause after the last one even while that one waits: the shard answering again is
    found within a pause. The frozen shard holds both the user's group and the process's inbox,
    so each send asks for it twice (the group, then its member): a send trying the shard must
    not refuse itself. The server is frozen (SIGSTOP): a host that answers nothing."""
    settings.NOTIFY_SEND_TIMEOUT, settings.LAYER_SHARD_PAUSE = 2.0, 0.5
    layer = get_channel_layer()
    frozen = layer.consistent_hash(await layer.new_channel())
    users = [await get_user_model().objects.acreate(username=f"paused-{n}") for n in range(20)]
    on_frozen = next(u for u in users if layer.consistent_hash(f"notifications_{u.pk}") == frozen)
    on_other = next(u.pk for u in users if layer.consistent_hash(f"notifications_{u.pk}") != frozen)
    communicator, accepted, _ = await connect("/ws/notifications/", await sync_to_async(session_headers)(on_frozen))
    assert accepted
    try:
        await asend_notification(on_frozen.pk, "both shards answer")
        assert (await communicator.receive_json_from(5))["message"] == "both shards answer"
        await asend_notification(on_other, "both shards answer")

        sharded[frozen].process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(TimeoutError) as first:
                await asend_notification(on_frozen.pk, "waits its whole time")
            assert not isinstance(first.value, ShardPaused)
            with pytest.raises(ShardPaused):
                await asend_notification(on_frozen.pk, "refused at once")
            await asend_notification(on_other, "the other shard is served")

            await asyncio.sleep(settings.LAYER_SHARD_PAUSE)
            probe = asyncio.create_task(asend_notification(on_frozen.pk, "tries the shard again"))
            await asyncio.sleep(0.1)
            with pytest.raises(ShardPaused):
                await asend_notification(on_frozen.pk, "refused while the other one tries")
            # A pause after the first try, the next goes ahead though the first still waits.
            await asyncio.sleep(settings.LAYER_SHARD_PAUSE)
            assert not probe.done()
            second = asyncio.create_task(asend_notification(on_frozen.pk, "a second try, a pause later"))
            await asyncio.sleep(0.1)
        finally:
            sharded[frozen].process.send_signal(signal.SIGCONT)
        # The shard answers again within both tries' time: both complete.
        await probe
        await second
        assert layer.paused_until == {}

        await asend_notification(on_frozen.pk, "and stays open")
        received = []
        while "and stays open" not in received:
            received.append((await communicator.receive_json_from(5))["message"])
        assert {"tries the shard again", "a second try, a pause later"} <= set(received), received
    finally:
        await communicator.disconnect()
