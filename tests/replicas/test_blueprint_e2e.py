"""End to end from the controller, as users reach the stack: through nginx over TLS."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.replicas.conftest import instance_gauges, names, open_ws, sentinel_failover


def test_http_goes_to_https_and_metrics_are_never_proxied(site):
    plain = httpx.get(site["base"].replace("https", "http") + "/healthz", follow_redirects=False)
    assert plain.status_code == 301
    assert plain.headers["location"] == f"{site['base']}/healthz"
    assert site["client"].get("/metrics").status_code == 404
    assert site["client"].get("/static/realtime/socket.js").status_code == 200
    ready = site["client"].get("/readyz").json()
    assert ready["status"] == "ok", ready
    assert ready["checks"]["channel_layer"]["backend"] == "FailoverAwareChannelLayer"


async def test_a_notification_posted_to_the_http_pool_reaches_the_socket(site):
    async with open_ws(site, "/ws/notifications/") as ws:
        response = await asyncio.to_thread(
            site["client"].post,
            "/api/notifications/",
            json={"user_id": site["user_id"], "message": "through the whole stack"},
            headers={"Authorization": f"Bearer {site['token']}"},
        )
        assert response.status_code == 202
        message = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert message["type"] == "notification"
        assert message["message"] == "through the whole stack"


async def test_anonymous_and_cross_origin_handshakes_are_refused(site):
    with pytest.raises(InvalidStatus) as anonymous:
        await open_ws(site, "/ws/notifications/", session=False)
    assert anonymous.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as foreign:
        await open_ws(site, "/ws/notifications/", origin="https://evil.example")
    assert foreign.value.response.status_code == 403


async def test_the_fourth_socket_of_a_user_is_refused_across_hosts(site):
    held = [await open_ws(site, "/ws/notifications/") for _ in range(3)]
    try:
        fourth = await open_ws(site, "/ws/notifications/")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(fourth.recv(), 10)
        assert closed.value.rcvd.code == 4429
    finally:
        for ws in held:
            await ws.close()


async def test_forty_sockets_spread_over_every_daphne_instance_of_both_hosts(site, hosts, stack):
    sockets = [await open_ws(site, "/ws/live/", session=False) for _ in range(40)]
    try:
        gauges = await asyncio.to_thread(instance_gauges, hosts, stack, "live")
        print(f"\nfigure: live sockets per daphne instance: {gauges}")
        assert sum(gauges.values()) == 40
        assert len(gauges) >= 2 * len(stack.topology.group("ws"))
        assert all(value > 0 for value in gauges.values()), gauges
        assert {name.split(":")[0] for name in gauges} == {h.name for h in stack.topology.group("ws")}
    finally:
        for ws in sockets:
            await ws.close()


@pytest.mark.skipif(len(names("redis")) < 2, reason="a single Redis host has no replica to fail over to")
async def test_a_sentinel_failover_keeps_sockets_open_and_notifications_flowing(site, hosts, secrets):
    async with open_ws(site, "/ws/notifications/") as ws:
        old, new = await asyncio.to_thread(sentinel_failover, hosts, secrets)
        print(f"\nfigure: failover, master {old} -> {new}")
        response = await asyncio.to_thread(
            site["client"].post,
            "/api/notifications/",
            json={"user_id": site["user_id"], "message": "after the failover"},
            headers={"Authorization": f"Bearer {site['token']}"},
        )
        assert response.status_code == 202, response.text
        # The socket opened before the failover is still open and receives it.
        message = json.loads(await asyncio.wait_for(ws.recv(), 20))
        assert message["message"] == "after the failover"
