"""What group_send tells its callers, and the notification accounting built on it, on a real Redis."""

import re
import threading

import pytest
from channels.layers import get_channel_layer
from prometheus_client import REGISTRY

from notifications.services import asend_notification, group_name, send_notification
from realtime import bridge
from realtime.layer import group_send
from testing import connect

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_group_send_tells_how_many_channels_it_addressed(redis_layer):
    layer = get_channel_layer()
    members = [await layer.new_channel() for _ in range(2)]
    for channel in members:
        await layer.group_add("counted", channel)
    assert await group_send("counted", {"type": "x.y"}) == 2
    assert await group_send("nobody-here", {"type": "x.y"}) == 0
    for channel in members:
        assert (await layer.receive(channel))["type"] == "x.y"


async def test_a_notification_counts_its_recipients_and_each_delivery(redis_layer, user, auth_headers):
    recipients, delivered = sample("notifications_recipients_total"), sample("notifications_delivered_total")
    sockets = [(await connect("/ws/notifications/", auth_headers))[0] for _ in range(2)]
    await asend_notification(user.pk, "counted twice")
    for communicator in sockets:
        assert (await communicator.receive_json_from(5))["message"] == "counted twice"
    # A member that never reads (a process that died holding it) is addressed, never delivered to.
    await get_channel_layer().group_add(f"notifications_{user.pk}", "specific.dead!gone")
    await asend_notification(user.pk, "one of three lost")
    for communicator in sockets:
        assert (await communicator.receive_json_from(5))["message"] == "one of three lost"
        await communicator.disconnect()
    assert sample("notifications_recipients_total") - recipients == 5
    assert sample("notifications_delivered_total") - delivered == 4


def connections_received(server) -> int:
    return int(re.search(r"total_connections_received:(\d+)", server.cli("INFO", "stats")).group(1))


def test_sync_callers_reuse_one_loop_and_its_redis_connections(redis_layer, user):
    layer = get_channel_layer()
    channel = bridge.call(layer.new_channel)
    bridge.call(layer.group_add, group_name(user.pk), channel)
    send_notification(user.pk, "warm-up")  # the process's pool opens its connection
    before = connections_received(redis_layer)
    for i in range(20):
        send_notification(user.pk, f"n{i}")
    # Only redis-cli's own connection (the INFO above); async_to_sync opened one per call here: 21.
    assert connections_received(redis_layer) - before == 1
    # From several threads at once (gunicorn's gthread workers), every one still arrives.
    threads = [threading.Thread(target=send_notification, args=(user.pk, f"t{i}")) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    received = [bridge.call(layer.receive, channel)["message"] for _ in range(1 + 20 + 8)]
    assert received[:21] == ["warm-up"] + [f"n{i}" for i in range(20)]
    assert sorted(received[21:]) == sorted(f"t{i}" for i in range(8))


def test_a_forked_process_gets_a_loop_of_its_own(monkeypatch):
    parent = bridge._process_loop()
    assert bridge._process_loop() is parent
    monkeypatch.setattr(bridge.os, "getpid", lambda: -1)
    assert bridge._process_loop() is not parent
