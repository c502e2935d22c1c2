from datetime import datetime

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from notifications.services import asend_notification, group_name, send_notification
from testing import connect, session_headers

pytestmark = pytest.mark.django_db(transaction=True)


async def test_anonymous_handshake_is_rejected():
    _, accepted, _ = await connect("/ws/notifications/")
    assert accepted is False


async def test_notification_event_reaches_the_client_in_the_documented_shape(user, auth_headers):
    communicator, accepted, _ = await connect("/ws/notifications/", auth_headers)
    assert accepted
    await get_channel_layer().group_send(
        group_name(user.pk),
        {"type": "notification.message", "message": "hello", "timestamp": "2026-01-02T03:04:05+00:00"},
    )
    assert await communicator.receive_json_from() == {
        "type": "notification",
        "message": "hello",
        "timestamp": "2026-01-02T03:04:05+00:00",
    }
    await communicator.disconnect()


async def test_send_notification_from_sync_code_reaches_every_socket_of_the_user(user, auth_headers):
    first, _, _ = await connect("/ws/notifications/", auth_headers)
    second, _, _ = await connect("/ws/notifications/", auth_headers)
    await sync_to_async(send_notification, thread_sensitive=False)(user.pk, "order shipped")
    for communicator in (first, second):
        message = await communicator.receive_json_from()
        assert message["message"] == "order shipped"
        assert datetime.fromisoformat(message["timestamp"]).tzinfo is not None
        await communicator.disconnect()


async def test_users_only_receive_their_own_notifications(user, other_user, auth_headers):
    mine, _, _ = await connect("/ws/notifications/", auth_headers)
    theirs, _, _ = await connect("/ws/notifications/", await sync_to_async(session_headers)(other_user))
    await asend_notification(other_user.pk, "for bob only")
    assert (await theirs.receive_json_from())["message"] == "for bob only"
    assert await mine.receive_nothing(timeout=0.3)
    await mine.disconnect()
    await theirs.disconnect()


async def test_disconnect_leaves_the_group(user, auth_headers):
    communicator, _, _ = await connect("/ws/notifications/", auth_headers)
    layer = get_channel_layer()
    assert layer.groups.get(group_name(user.pk))
    await communicator.disconnect()
    assert not layer.groups.get(group_name(user.pk))
