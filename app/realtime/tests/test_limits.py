"""The per-user limit: in one process, and across two channel layers sharing a real Redis."""

import asyncio

import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from realtime import closecodes, limits
from testing import connect

pytestmark = pytest.mark.django_db(transaction=True)


async def open_sockets(path, headers, n):
    opened = []
    for _ in range(n):
        communicator, accepted, _ = await connect(path, headers)
        assert accepted
        opened.append(communicator)
    return opened


async def assert_refused_with_4429(path, headers):
    communicator, accepted, _ = await connect(path, headers)
    assert accepted  # accepted so that the client can read the code...
    assert await communicator.receive_output() == {"type": "websocket.close", "code": closecodes.TOO_MANY_CONNECTIONS}


# A socket reading a channel of its own on the layer, and one that reads none (its slot's name is its own).
ENDPOINTS = ["/ws/notifications/", "/ws/live/"]


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_fourth_socket_is_closed_with_4429_and_a_freed_slot_is_reusable(auth_headers, path):
    sockets = await open_sockets(path, auth_headers, 3)
    await assert_refused_with_4429(path, auth_headers)
    await sockets[0].disconnect()
    sockets[1:] += await open_sockets(path, auth_headers, 1)
    for s in sockets[1:]:
        await s.disconnect()


async def test_limit_is_per_endpoint(auth_headers):
    """A browser tab holds one socket per endpoint; the limit counts each endpoint on its own."""
    sockets = await open_sockets("/ws/notifications/", auth_headers, 3)
    sockets += await open_sockets("/ws/orders/", auth_headers, 3)
    for s in sockets:
        await s.disconnect()


async def test_limit_is_configurable(auth_headers, settings):
    settings.WS_MAX_CONNECTIONS_PER_USER = 1
    sockets = await open_sockets("/ws/notifications/", auth_headers, 1)
    await assert_refused_with_4429("/ws/notifications/", auth_headers)
    await sockets[0].disconnect()


@pytest.mark.redis
@pytest.mark.parametrize("path", ENDPOINTS)
async def test_limit_holds_across_two_separate_layers_on_one_redis(redis_layer, auth_headers, path):
    """Two RedisChannelLayer instances stand for two daphne processes (tests/processes do it for real)."""
    from channels.layers import channel_layers

    first_process = await open_sockets(path, auth_headers, 2)
    channel_layers.backends["default"] = RedisChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])
    second_process = await open_sockets(path, auth_headers, 1)
    await assert_refused_with_4429(path, auth_headers)
    for s in first_process + second_process:
        await s.disconnect()


@pytest.mark.redis
async def test_slots_of_a_vanished_process_expire(redis_layer, settings, user):
    settings.WS_CONNECTION_SLOT_TTL = 1
    slots = limits.slots()
    assert isinstance(slots, limits.RedisSlots)
    for n in range(3):
        assert await slots.acquire("notifications", user.pk, f"crashed-process-{n}")
    assert not await slots.acquire("notifications", user.pk, "new")
    await asyncio.sleep(1.2)  # nobody renewed: the dead process's slots lapse
    assert await slots.acquire("notifications", user.pk, "new")


@pytest.mark.redis
async def test_renewal_keeps_a_slot_and_reacquire_is_idempotent(redis_layer, settings, user):
    settings.WS_CONNECTION_SLOT_TTL = 1
    slots = limits.slots()
    assert await slots.acquire("orders", user.pk, "a")
    assert await slots.acquire("orders", user.pk, "a")  # same member: still one slot
    assert await slots.acquire("notifications", user.pk, "b")
    for _ in range(3):
        await asyncio.sleep(0.5)
        assert await slots.renew([("orders", user.pk, "a"), ("notifications", user.pk, "b")]) == [True, True]
    await slots.release("orders", user.pk, "a")
    # One call answers for each slot: the released one is reported, the other renewed.
    assert await slots.renew([("orders", user.pk, "a"), ("notifications", user.pk, "b")]) == [False, True]
    assert await slots.renew([]) == []


@pytest.mark.redis
async def test_renewal_of_more_slots_than_one_batch(redis_layer, settings, user, monkeypatch):
    monkeypatch.setattr(limits, "RENEW_BATCH", 2)
    slots = limits.slots()
    held = [("live", user.pk, f"socket-{n}") for n in range(5)]
    for endpoint, user_id, member in held[:4]:
        assert await slots.acquire(endpoint, user_id, member, force=True)
    assert await slots.renew(held) == [True, True, True, True, False]


async def test_a_consumer_that_dies_in_a_handler_gives_back_its_slot_gauge_and_groups(auth_headers, user):
    """An exception outside receive() ends the consumer without a disconnect: nothing may leak."""
    from channels.layers import get_channel_layer
    from prometheus_client import REGISTRY

    from notifications.services import group_name

    def gauge():
        return REGISTRY.get_sample_value("websocket_connections", {"consumer": "notifications"}) or 0.0

    before = gauge()
    sockets = await open_sockets("/ws/notifications/", auth_headers, settings.WS_MAX_CONNECTIONS_PER_USER)
    assert gauge() == before + len(sockets)
    # A malformed event (no "message") makes every consumer's handler raise.
    await get_channel_layer().group_send(group_name(user.pk), {"type": "notification.message"})
    for communicator in sockets:
        with pytest.raises(KeyError):
            await communicator.wait(timeout=2)
    assert gauge() == before
    assert get_channel_layer().groups.get(group_name(user.pk), {}) == {}
    # Every slot was given back: the user gets the full limit again.
    again = await open_sockets("/ws/notifications/", auth_headers, settings.WS_MAX_CONNECTIONS_PER_USER)
    for communicator in again:
        await communicator.disconnect()
