import asyncio
import json

import pytest
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.management import call_command

from live.consumers import feed
from live.ticks import event
from realtime.layer import group_send
from testing import connect

pytestmark = pytest.mark.django_db(transaction=True)


def tick(n: int) -> dict:
    return event({"symbol": "ACME", "price": 100.0 + n, "ts": f"2026-01-01T00:00:0{n % 10}+00:00"})


async def test_anonymous_clients_may_watch():
    communicator, accepted, _ = await connect("/ws/live/")
    assert accepted
    await communicator.disconnect()


async def test_the_first_tick_goes_at_once_and_the_rest_of_its_interval_as_one_batch(settings):
    settings.LIVE_BATCH_INTERVAL = 0.4
    communicator, _, _ = await connect("/ws/live/")
    for n in range(5):
        await group_send(settings.LIVE_GROUP, tick(n))
    first = await communicator.receive_json_from(timeout=1)
    assert first["type"] == "batch"
    assert [u["price"] for u in first["updates"]] == [100.0]
    # The others wait for the end of the window the first one opened, then go together.
    assert await communicator.receive_nothing(timeout=0.1)
    rest = await communicator.receive_json_from(timeout=1)
    assert [u["price"] for u in rest["updates"]] == [101.0, 102.0, 103.0, 104.0]
    # Nothing more was published, so nothing more is sent.
    assert await communicator.receive_nothing(timeout=0.6)
    await communicator.disconnect()


async def test_a_quiet_interval_sends_nothing_and_later_ticks_form_a_new_batch(settings):
    settings.LIVE_BATCH_INTERVAL = 0.1
    communicator, _, _ = await connect("/ws/live/")
    assert await communicator.receive_nothing(timeout=0.35)
    await group_send(settings.LIVE_GROUP, tick(1))
    first = await communicator.receive_json_from(timeout=1)
    await asyncio.sleep(0.25)
    await group_send(settings.LIVE_GROUP, tick(2))
    second = await communicator.receive_json_from(timeout=1)
    assert [u["price"] for u in first["updates"]] == [101.0]
    assert [u["price"] for u in second["updates"]] == [102.0]
    await communicator.disconnect()


async def test_a_quiet_process_arms_no_timer_and_a_busy_one_arms_one_for_every_socket(settings):
    settings.LIVE_BATCH_INTERVAL = 0.3
    watchers = [(await connect("/ws/live/"))[0] for _ in range(3)]
    assert await watchers[0].receive_nothing(timeout=0.3)
    assert feed().timer is None
    await group_send(settings.LIVE_GROUP, tick(1))
    for communicator in watchers:
        assert [u["price"] for u in (await communicator.receive_json_from(timeout=1))["updates"]] == [101.0]
    assert feed().timer is None  # sent at once: nothing waits
    await group_send(settings.LIVE_GROUP, tick(2))  # within the window the first frame opened
    for _ in range(100):
        if feed().pending:
            break
        await asyncio.sleep(0.01)
    assert len(feed().pending) == 1
    assert feed().timer is not None
    for communicator in watchers:
        assert [u["price"] for u in (await communicator.receive_json_from(timeout=1))["updates"]] == [102.0]
    assert feed().timer is None
    assert not feed().pending
    await watchers[0].disconnect()
    await asyncio.sleep(0.35)
    await group_send(settings.LIVE_GROUP, tick(3))
    for communicator in watchers[1:]:
        assert [u["price"] for u in (await communicator.receive_json_from(timeout=1))["updates"]] == [103.0]
        await communicator.disconnect()
    assert not feed().sockets


@pytest.mark.redis
async def test_a_broadcast_reaches_a_process_once_whatever_its_socket_count(redis_layer, settings):
    """The process's channel is the group's one member: one message per tick, fanned out here."""
    settings.LIVE_BATCH_INTERVAL = 0.05
    watchers = [(await connect("/ws/live/"))[0] for _ in range(4)]
    assert await group_send(settings.LIVE_GROUP, tick(3)) == 1
    assert redis_layer.cli("ZCARD", get_channel_layer()._group_key(settings.LIVE_GROUP).decode()) == "1"
    frames = [await communicator.receive_from(timeout=1) for communicator in watchers]
    assert len(set(frames)) == 1  # one frame, encoded once, sent to every socket
    assert json.loads(frames[0])["updates"][0]["price"] == 103.0
    for communicator in watchers:
        await communicator.disconnect()


@pytest.mark.redis
async def test_a_live_socket_reads_no_channel_of_its_own(redis_layer):
    """The feed's channel is the only one the process reads for its live sockets: no socket holds
    Channels' reader of a channel (a task, the layer's buffer queue and its tasks)."""
    watchers = [(await connect("/ws/live/"))[0] for _ in range(3)]
    await asyncio.sleep(0.1)  # a reader of its own would be waiting on the layer by now
    assert set(get_channel_layer().receive_buffer) == {feed().channel_name}
    for communicator in watchers:
        await communicator.disconnect()


@pytest.mark.redis
async def test_the_process_leaves_the_group_with_its_last_socket_and_joins_with_the_next(redis_layer, settings):
    settings.LIVE_BATCH_INTERVAL = 0.05
    key = get_channel_layer()._group_key(settings.LIVE_GROUP).decode()
    first = [(await connect("/ws/live/"))[0] for _ in range(2)]
    assert redis_layer.cli("ZCARD", key) == "1"
    for communicator in first:
        await communicator.disconnect()
    for _ in range(50):
        if redis_layer.cli("ZCARD", key) == "0":
            break
        await asyncio.sleep(0.02)
    assert redis_layer.cli("ZCARD", key) == "0"
    assert feed().reader is None
    communicator, _, _ = await connect("/ws/live/")
    assert await group_send(settings.LIVE_GROUP, tick(4)) == 1
    assert (await communicator.receive_json_from(timeout=1))["updates"][0]["price"] == 104.0
    await communicator.disconnect()


async def test_every_watcher_gets_the_broadcast():
    watchers = [(await connect("/ws/live/"))[0] for _ in range(3)]
    await group_send(settings.LIVE_GROUP, tick(7))
    for communicator in watchers:
        assert (await communicator.receive_json_from(timeout=1))["updates"][0]["price"] == 107.0
        await communicator.disconnect()


async def test_publish_ticks_command_feeds_the_dashboard(settings):
    from asgiref.sync import sync_to_async

    settings.LIVE_BATCH_INTERVAL = 0.05
    communicator, _, _ = await connect("/ws/live/")
    await sync_to_async(call_command, thread_sensitive=False)(
        "publish_ticks", "--rate", "200", "--count", "12", "--symbols", "AAA,BBB", "--seed", "1"
    )
    received = []
    while len(received) < 12:
        received += (await communicator.receive_json_from(timeout=1))["updates"]
    assert len(received) == 12
    assert {u["symbol"] for u in received} <= {"AAA", "BBB"}
    assert all(u["price"] > 0 for u in received)
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()
