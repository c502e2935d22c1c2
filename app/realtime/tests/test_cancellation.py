"""A cancelled Redis command ends its task, whenever the cancellation arrives (config/redis.py).

The window that matters is the command's write: redis-py writes under
``asyncio.wait_for``, which on Python 3.11 drops a cancellation arriving as the
write completes. These tests cancel the task from inside that write.
"""

import asyncio

import pytest
from channels.layers import get_channel_layer
from redis.asyncio.connection import AbstractConnection

from notifications.services import group_name
from realtime.redis_client import new_client
from testing import connect

pytestmark = pytest.mark.redis


@pytest.fixture
def cancel_during_write(monkeypatch):
    """cancel_during_write(task, b"COMMAND"): cancel task while its next such command is being written."""
    original = AbstractConnection._send_packed_command
    armed: dict = {}

    async def write(self, command):
        packed = b"".join(bytes(part) for part in command)
        if armed and armed["command"] in packed:
            armed.pop("task").cancel()
            armed.clear()
        await original(self, command)

    monkeypatch.setattr(AbstractConnection, "_send_packed_command", write)

    def arm(task: asyncio.Task, command: bytes) -> None:
        armed.update(task=task, command=command)

    return arm


async def test_a_channel_read_cancelled_while_its_blocking_read_is_written_ends(redis_layer, cancel_during_write):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    reader = asyncio.ensure_future(layer.receive(channel))
    cancel_during_write(reader, b"BZPOPMIN")
    # Dropped, the cancellation left the read going on, one blocking read after another.
    done, _ = await asyncio.wait([reader], timeout=5)
    assert done == {reader}
    assert reader.cancelled()
    await layer.send(channel, {"type": "after"})
    assert (await layer.receive(channel))["type"] == "after"


async def test_a_command_cancelled_during_its_write_leaves_no_reply_for_the_next(redis_layer, cancel_during_write):
    async with new_client() as client:
        await client.set("a", "1")
        await client.set("b", "2")
        getter = asyncio.ensure_future(client.get("a"))
        cancel_during_write(getter, b"GET")
        with pytest.raises(asyncio.CancelledError):
            await getter
        # Had the connection gone back to the pool with "1" unread, this would read it.
        assert await client.get("b") == b"2"


@pytest.mark.django_db(transaction=True)
async def test_sockets_closing_one_after_another_each_end_by_themselves(redis_layer, settings, auth_headers, user):
    """Each consumer's end cancels its channel read; none waits for the test client to cancel it."""
    settings.WS_MAX_CONNECTIONS_PER_USER = 5
    sockets = [(await connect("/ws/notifications/", auth_headers))[0] for _ in range(5)]
    await asyncio.sleep(0.2)  # the process's channel read is under way
    for communicator in sockets:
        await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
        # A dropped cancellation kept the read going (one 1 s blocking read after
        # another) and the consumer waiting on it, until cancelled from outside.
        done, _ = await asyncio.wait([communicator.future], timeout=5)
        assert done, "the consumer did not end after its socket closed"
    assert redis_layer.cli("ZCARD", get_channel_layer()._group_key(group_name(user.pk)).decode()) == "0"
