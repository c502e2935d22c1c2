"""Draining a stopping process (realtime/drain.py); the real signal path is in test_processes.py."""

import pytest

from realtime import closecodes, drain
from testing import connect

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def not_draining():
    yield
    drain._state.update(draining=False, task=None, emptied=None)


async def test_drain_closes_every_socket_with_4001_and_waits_for_their_cleanup(auth_headers, not_draining, settings):
    settings.WS_DRAIN_SECONDS = 0.5
    sockets = [(await connect("/ws/notifications/", auth_headers))[0] for _ in range(2)]
    sockets.append((await connect("/ws/live/"))[0])
    assert drain.open_sockets() == 3
    stopped = []
    assert await drain.drain(stop=lambda: stopped.append(drain.open_sockets())) == 3
    for communicator in sockets:
        assert await communicator.receive_output() == {"type": "websocket.close", "code": closecodes.GOING_AWAY}
    # The test client never answers the close: the drain waited its bound, then stopped.
    assert stopped == [3]
    for communicator in sockets:
        await communicator.disconnect()
    assert drain.open_sockets() == 0


async def test_a_draining_process_sends_new_sockets_away_and_is_not_ready(auth_headers, async_client, not_draining):
    drain._state["draining"] = True
    communicator, accepted, _ = await connect("/ws/notifications/", auth_headers)
    assert accepted  # accepted so that the client reads the code, as with 4429
    assert await communicator.receive_output() == {"type": "websocket.close", "code": closecodes.GOING_AWAY}
    assert drain.open_sockets() == 0
    response = await async_client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "draining"
