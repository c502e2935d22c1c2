"""A Sentinel failover under an open WebSocket: the socket stays and keeps receiving.

The sender is a separate channel layer, as another process would be: it finds
the new master through Sentinel, so the message only arrives if the
consumer's own connections followed the master too.
"""

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from channels_redis.core import RedisChannelLayer

from notifications.services import event, group_name
from testing import RedisServer, connect, redis_settings, session_headers

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]
MASTER = "channels"


@pytest.fixture
def sentinel_cluster():
    master = RedisServer().start()
    replica = RedisServer(extra=[f"replicaof 127.0.0.1 {master.port}"]).start()
    sentinels = []
    for _ in range(3):
        sentinels.append(
            RedisServer(
                sentinel=True,
                extra=[
                    f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 2",
                    f"sentinel down-after-milliseconds {MASTER} 2000",
                    f"sentinel failover-timeout {MASTER} 10000",
                ],
            ).start()
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if replica.cli("INFO", "replication").count("master_link_status:up") and all(
            "num-other-sentinels\n2" in s.cli("SENTINEL", "MASTER", MASTER) for s in sentinels
        ):
            break
        time.sleep(0.2)
    else:
        pytest.fail("sentinel cluster did not form")
    yield master, replica, sentinels
    for server in [*sentinels, replica, master]:
        server.stop()


def master_port(sentinel: RedisServer) -> int:
    return int(sentinel.cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER).split()[1])


@pytest.mark.parametrize("demote_old_master", [True, False], ids=["old-master-demoted", "old-master-lingering"])
async def test_open_socket_survives_a_failover_and_receives_from_the_new_master(
    sentinel_cluster, settings, user, demote_old_master
):
    master, replica, sentinels = sentinel_cluster
    spec = {
        "mode": "sentinel",
        "sentinels": [("127.0.0.1", s.port) for s in sentinels],
        "master_name": MASTER,
        "db": 0,
        "socket_timeout": 3.0,
        "retry_seconds": 20.0,
    }
    for name, value in redis_settings(spec).items():
        setattr(settings, name, value)
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    communicator, accepted, _ = await connect("/ws/notifications/", await sync_to_async(session_headers)(user))
    assert accepted
    other_process = RedisChannelLayer(**config)
    await other_process.group_send(group_name(user.pk), event("before"))
    assert (await communicator.receive_json_from(timeout=5))["message"] == "before"

    await asyncio.sleep(0.5)  # the consumer is now blocked reading from the master
    assert master_port(sentinels[0]) == master.port
    sentinels[0].cli("SENTINEL", "FAILOVER", MASTER)
    deadline = time.monotonic() + 20
    while {master_port(s) for s in sentinels} != {replica.port} and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert {master_port(s) for s in sentinels} == {replica.port}, "sentinels did not agree on the new master"
    if demote_old_master:
        # What Sentinel does to the old master once it sees it: the blocked read gets -UNBLOCKED.
        master.cli("REPLICAOF", "127.0.0.1", str(replica.port))

    other_process = RedisChannelLayer(**config)  # a process started after the failover
    await other_process.group_send(group_name(user.pk), event("after failover"))
    message = await communicator.receive_json_from(timeout=15)
    assert message["message"] == "after failover"
    assert await communicator.receive_nothing(timeout=0.5)  # and no close followed
    await communicator.disconnect()
