import pytest
from prometheus_client import REGISTRY

from testing import connect

pytestmark = pytest.mark.django_db(transaction=True)


def value(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_are_served_to_allowed_addresses(client):
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert b"# TYPE websocket_connections gauge" in response.content


def test_metrics_are_refused_elsewhere(client, settings):
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 403
    import ipaddress

    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("203.0.113.0/24")]
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 200


def test_http_requests_are_counted_by_view_method_and_status(client):
    before_ok = value("http_requests_total", view="healthz", method="GET", status="200")
    before_404 = value("http_requests_total", view="unmatched", method="GET", status="404")
    before_hist = value("http_request_duration_seconds_count", view="healthz", method="GET")
    for _ in range(3):
        client.get("/healthz")
    client.get("/no/such/page")
    assert value("http_requests_total", view="healthz", method="GET", status="200") == before_ok + 3
    assert value("http_requests_total", view="unmatched", method="GET", status="404") == before_404 + 1
    assert value("http_request_duration_seconds_count", view="healthz", method="GET") == before_hist + 3


async def test_connection_metrics_follow_sockets(auth_headers):
    gauge = lambda: value("websocket_connections", consumer="notifications")  # noqa: E731
    start = gauge()
    opened = value("websocket_connections_opened_total", consumer="notifications")
    sockets = [(await connect("/ws/notifications/", auth_headers))[0] for _ in range(3)]
    assert gauge() == start + 3
    assert value("websocket_connections_opened_total", consumer="notifications") == opened + 3
    rejected = value("websocket_connections_rejected_total", consumer="notifications", reason="connection_limit")
    extra, _, _ = await connect("/ws/notifications/", auth_headers)
    await extra.receive_output()
    assert (
        value("websocket_connections_rejected_total", consumer="notifications", reason="connection_limit")
        == rejected + 1
    )
    assert gauge() == start + 3  # a refused socket never counts as open
    for s in sockets[:2]:
        await s.disconnect()
    assert gauge() == start + 1
    await sockets[2].disconnect()
    assert gauge() == start


async def test_anonymous_rejection_and_messages_are_counted(auth_headers):
    rejected = value("websocket_connections_rejected_total", consumer="orders", reason="unauthenticated")
    await connect("/ws/orders/")
    assert value("websocket_connections_rejected_total", consumer="orders", reason="unauthenticated") == rejected + 1

    received = value("websocket_messages_received_total", consumer="orders")
    sent = value("websocket_messages_sent_total", consumer="orders")
    bad = value("websocket_bad_input_total", consumer="orders", error="invalid_json")
    communicator, _, _ = await connect("/ws/orders/", auth_headers)
    await communicator.send_to(text_data="{{{")
    await communicator.receive_json_from()
    await communicator.send_json_to({"type": "ping"})
    await communicator.receive_json_from()
    assert value("websocket_messages_received_total", consumer="orders") == received + 2
    assert value("websocket_messages_sent_total", consumer="orders") == sent + 2
    assert value("websocket_bad_input_total", consumer="orders", error="invalid_json") == bad + 1
    await communicator.disconnect()


async def test_group_send_latency_and_layer_errors_are_recorded(monkeypatch):
    from channels.layers import get_channel_layer

    from realtime.layer import group_send

    count = value("channel_layer_group_send_seconds_count")
    await group_send("somebody", {"type": "x"})
    assert value("channel_layer_group_send_seconds_count") == count + 1

    async def broken(*args):
        raise ConnectionError("layer down")

    errors = value("channel_layer_errors_total", operation="group_send")
    monkeypatch.setattr(get_channel_layer(), "group_send", broken)
    with pytest.raises(ConnectionError):
        await group_send("somebody", {"type": "x"})
    assert value("channel_layer_errors_total", operation="group_send") == errors + 1
