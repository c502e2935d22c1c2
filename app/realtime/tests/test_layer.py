"""What group_send tells its callers, and the notification accounting built on it, on a real Redis."""

import pytest
from channels.layers import get_channel_layer
from prometheus_client import REGISTRY

from notifications.services import asend_notification
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
