"""Every kind of bad input gets its documented answer and the socket keeps serving."""

import json

import pytest

from realtime import closecodes
from testing import connect

pytestmark = pytest.mark.django_db(transaction=True)


async def assert_still_serving(communicator):
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from() == {"type": "pong"}


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("not json {", closecodes.INVALID_JSON),
        ("[1, 2, 3]", closecodes.INVALID_MESSAGE),
        ('"a string"', closecodes.INVALID_MESSAGE),
        (json.dumps({"type": "launch.missiles"}), closecodes.UNKNOWN_TYPE),
        (json.dumps({"order_id": "7"}), closecodes.INVALID_FIELD),
        (json.dumps({"order_id": True}), closecodes.INVALID_FIELD),
        (json.dumps({"order_id": -3}), closecodes.INVALID_FIELD),
        (json.dumps({"order_id": 2**63}), closecodes.INVALID_FIELD),
        (json.dumps({}), closecodes.INVALID_FIELD),
    ],
)
async def test_bad_text_frames_get_an_error_frame(auth_headers, frame, error):
    communicator, accepted, _ = await connect("/ws/orders/", auth_headers)
    assert accepted
    await communicator.send_to(text_data=frame)
    answer = await communicator.receive_json_from()
    assert answer["type"] == "error"
    assert answer["error"] == error
    await assert_still_serving(communicator)
    await communicator.disconnect()


async def test_binary_frame_gets_an_error_frame(auth_headers):
    communicator, _, _ = await connect("/ws/notifications/", auth_headers)
    await communicator.send_to(bytes_data=b"\x00\x01binary")
    answer = await communicator.receive_json_from()
    assert answer["error"] == closecodes.BINARY_NOT_SUPPORTED
    await assert_still_serving(communicator)
    await communicator.disconnect()


@pytest.mark.parametrize("kind", ["text", "bytes"])
async def test_oversized_frame_closes_with_4009(auth_headers, settings, kind):
    settings.WS_MAX_MESSAGE_BYTES = 1024
    communicator, _, _ = await connect("/ws/notifications/", auth_headers)
    if kind == "text":
        await communicator.send_to(text_data=json.dumps({"type": "ping", "pad": "x" * 2000}))
    else:
        await communicator.send_to(bytes_data=b"x" * 2000)
    output = await communicator.receive_output()
    assert output == {"type": "websocket.close", "code": closecodes.MESSAGE_TOO_BIG}


async def test_a_frame_at_the_limit_is_accepted(auth_headers, settings):
    settings.WS_MAX_MESSAGE_BYTES = 1024
    communicator, _, _ = await connect("/ws/notifications/", auth_headers)
    frame = json.dumps({"type": "ping", "pad": ""})
    frame = json.dumps({"type": "ping", "pad": "y" * (1024 - len(frame))})
    assert len(frame.encode()) == 1024
    await communicator.send_to(text_data=frame)
    assert await communicator.receive_json_from() == {"type": "pong"}
    await communicator.disconnect()


async def test_a_failing_handler_answers_internal_error_and_keeps_the_socket(auth_headers, monkeypatch):
    from orders import consumers

    async def explode(user_id, order_id):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(consumers, "get_own_order", explode)
    communicator, _, _ = await connect("/ws/orders/", auth_headers)
    await communicator.send_json_to({"order_id": 1})
    answer = await communicator.receive_json_from()
    assert answer["error"] == closecodes.INTERNAL_ERROR
    assert "fire" not in json.dumps(answer)  # internals never reach the client
    await assert_still_serving(communicator)
    await communicator.disconnect()


async def test_unknown_ws_path_is_refused_at_the_handshake(auth_headers):
    _, accepted, _ = await connect("/ws/nope/", auth_headers)
    assert accepted is False


async def test_cross_origin_handshake_is_refused(auth_headers):
    headers = [h for h in auth_headers if h[0] != b"origin"] + [(b"origin", b"https://evil.example")]
    _, accepted, _ = await connect("/ws/notifications/", headers)
    assert accepted is False
