"""One renewal per process for every open socket's slot and groups, on a real Redis."""

import asyncio
import re

import pytest
from channels.layers import get_channel_layer
from prometheus_client import REGISTRY

from notifications.services import group_name
from realtime import keeper as keeper_module
from realtime import limits
from realtime.keeper import keeper
from testing import connect

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def calls(redis_server, command: str) -> int:
    found = re.search(rf"^cmdstat_{command}:calls=(\d+)", redis_server.cli("INFO", "commandstats"), re.M)
    return int(found.group(1)) if found else 0


def lost(endpoint: str) -> float:
    return REGISTRY.get_sample_value("websocket_state_lost_total", {"consumer": endpoint}) or 0.0


async def notification_sockets(settings, auth_headers, count: int) -> list:
    settings.WS_MAX_CONNECTIONS_PER_USER = count
    return [(await connect("/ws/notifications/", auth_headers))[0] for _ in range(count)]


async def test_one_renewal_restores_every_socket_of_the_process_after_redis_lost_it(
    redis_layer, settings, user, auth_headers
):
    settings.WS_STATE_REFRESH_SECONDS = 3600  # the test renews by hand
    sockets = await notification_sockets(settings, auth_headers, 5)
    watchers = [(await connect("/ws/live/"))[0] for _ in range(3)]
    slots, layer = f"wslimit:notifications:{user.pk}", get_channel_layer()
    assert redis_layer.cli("ZCARD", slots) == "5"
    # One task keeps them all, none per socket: the notification sockets and the live feed.
    running = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "StateKeeper._run"]
    assert running == [keeper().task]
    assert len(keeper().consumers) == 5 + 1

    before = lost("notifications")
    redis_layer.cli("FLUSHALL")
    redis_layer.cli("CONFIG", "RESETSTAT")
    await keeper().renew()

    assert redis_layer.cli("ZCARD", layer._group_key(group_name(user.pk)).decode()) == "5"
    assert redis_layer.cli("ZCARD", layer._group_key(settings.LIVE_GROUP).decode()) == "1"
    assert redis_layer.cli("ZCARD", slots) == "5"
    assert lost("notifications") == before + 5
    # One script call for every slot, then a re-take per lost one; one ZADD per group.
    assert calls(redis_layer, "eval") == 1 + 5
    assert calls(redis_layer, "zadd") == 5 + 2
    for communicator in sockets + watchers:
        await communicator.disconnect()
    assert not keeper().consumers


async def test_groups_larger_than_one_batch_are_renewed_whole(redis_layer, settings, user, auth_headers, monkeypatch):
    settings.WS_STATE_REFRESH_SECONDS = 3600
    monkeypatch.setattr(keeper_module, "GROUP_BATCH", 2)
    sockets = await notification_sockets(settings, auth_headers, 5)
    key = get_channel_layer()._group_key(group_name(user.pk)).decode()
    redis_layer.cli("DEL", key)
    redis_layer.cli("CONFIG", "RESETSTAT")
    await keeper().renew()
    assert redis_layer.cli("ZCARD", key) == "5"
    assert calls(redis_layer, "eval") == 1
    assert calls(redis_layer, "zadd") == 3 + 5  # three group batches; the script's five slot renewals
    for communicator in sockets:
        await communicator.disconnect()


async def test_the_keeper_renews_on_its_own_and_stops_with_the_last_socket(redis_layer, settings, user, auth_headers):
    settings.WS_STATE_REFRESH_SECONDS = 0.2
    (communicator,) = await notification_sockets(settings, auth_headers, 1)
    redis_layer.cli("FLUSHALL")
    key = get_channel_layer()._group_key(group_name(user.pk)).decode()
    for _ in range(50):
        if redis_layer.cli("ZCARD", key) == "1":
            break
        await asyncio.sleep(0.05)
    assert redis_layer.cli("ZCARD", key) == "1"
    task = keeper().task
    await communicator.disconnect()
    await asyncio.wait_for(task, 1)
    assert not keeper().consumers


async def test_a_member_that_leaves_during_a_renewal_is_not_added_back(
    redis_layer, settings, user, auth_headers, monkeypatch
):
    """The live feed leaves the group with its last socket while the keeper waits on the slots' round trip."""
    settings.WS_STATE_REFRESH_SECONDS = 3600
    (notified,) = await notification_sockets(settings, auth_headers, 1)
    watcher, _, _ = await connect("/ws/live/")
    key = get_channel_layer()._group_key(settings.LIVE_GROUP).decode()
    assert redis_layer.cli("ZCARD", key) == "1"
    real = limits.RedisSlots.renew

    async def renew_while_the_watcher_leaves(self, held):
        await watcher.disconnect()
        return await real(self, held)

    monkeypatch.setattr(limits.RedisSlots, "renew", renew_while_the_watcher_leaves)
    await keeper().renew()
    for _ in range(50):
        if redis_layer.cli("ZCARD", key) == "0":
            break
        await asyncio.sleep(0.02)
    assert redis_layer.cli("ZCARD", key) == "0"
    await notified.disconnect()


async def test_a_member_that_leaves_while_its_group_is_re_added_is_taken_out_again(
    redis_layer, settings, user, auth_headers, monkeypatch
):
    """The socket closes, and its group_discard lands, while the keeper's ZADD of its group is on its
    way: the ZADD puts it back, and the keeper takes it out again (else it would stay a member,
    sent to and never read, until the group expiry)."""
    settings.WS_STATE_REFRESH_SECONDS = 3600
    (notified,) = await notification_sockets(settings, auth_headers, 1)
    layer = get_channel_layer()
    key = layer._group_key(group_name(user.pk)).decode()
    assert redis_layer.cli("ZCARD", key) == "1"
    real = layer.group_add_many

    async def readd_after_the_socket_left(group, channels):
        await notified.disconnect()
        assert redis_layer.cli("ZCARD", key) == "0"  # its own discard landed first
        await real(group, channels)

    monkeypatch.setattr(layer, "group_add_many", readd_after_the_socket_left)
    await keeper().renew()
    assert redis_layer.cli("ZCARD", key) == "0"
    assert not keeper().consumers


async def test_a_failing_renewal_is_counted_and_retried_next_interval(redis_layer, settings, monkeypatch):
    settings.WS_STATE_REFRESH_SECONDS = 0.1
    failures = REGISTRY.get_sample_value("channel_layer_errors_total", {"operation": "refresh"}) or 0.0
    layer = get_channel_layer()
    real, attempts = layer.group_add_many, []

    async def flaky(group, channels):
        attempts.append(group)
        if len(attempts) == 1:
            raise ConnectionError("master gone")
        await real(group, channels)

    monkeypatch.setattr(layer, "group_add_many", flaky)
    communicator, _, _ = await connect("/ws/live/")
    for _ in range(50):
        if len(attempts) >= 2:
            break
        await asyncio.sleep(0.05)
    assert len(attempts) >= 2
    assert REGISTRY.get_sample_value("channel_layer_errors_total", {"operation": "refresh"}) == failures + 1
    await communicator.disconnect()
