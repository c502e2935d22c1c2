import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from testing import RedisServer, redis_settings, url_spec

pytestmark = pytest.mark.django_db(transaction=True)


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_ok_with_the_in_memory_layer(async_client):
    response = await async_client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "channel_layer", "redis"}
    assert body["checks"]["channel_layer"]["backend"] == "InMemoryChannelLayer"
    assert all(c["ok"] and c["latency_ms"] >= 0 for c in body["checks"].values())


@pytest.mark.redis
async def test_readyz_checks_the_real_redis(async_client, redis_layer):
    body = (await async_client.get("/readyz")).json()
    assert body["status"] == "ok", body
    assert body["checks"]["redis"]["role"] == "master"
    assert body["checks"]["channel_layer"]["backend"] == "FailoverAwareChannelLayer"


@pytest.mark.redis
async def test_readyz_is_503_when_redis_stops(async_client, settings):
    server = RedisServer().start()
    try:
        for name, value in redis_settings(url_spec(server.url)).items():
            setattr(settings, name, value)
        settings.READYZ_TIMEOUT = 1.0
        assert (await async_client.get("/readyz")).status_code == 200
        server.stop()
        started = time.monotonic()
        response = await async_client.get("/readyz")
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    body = response.json()
    assert response.status_code == 503, body
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["channel_layer"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True
    # The checks ran concurrently under one timeout: not one timeout per check.
    assert elapsed < 3 * settings.READYZ_TIMEOUT


class Upstreams(BaseHTTPRequestHandler):
    #: /pair/<n> answers only once two of them are in flight at the same time
    pair = threading.Barrier(2)

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(1.5)
        if self.path.startswith("/pair/"):
            try:
                self.pair.wait(timeout=0.9)
            except threading.BrokenBarrierError:
                self.send_response(503)
                self.end_headers()
                return
        if self.path == "/broken":
            self.send_response(500)
            self.end_headers()
            return
        body = b"<html>not json</html>" if self.path == "/html" else json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class UpstreamServer(ThreadingHTTPServer):
    # The eight fetches connect at once. With socketserver's listen backlog of 5 a busy
    # machine dropped a connection now and then, and its retry a second later came past
    # the aggregate's 1 s timeout (the pair's two fetches then failed, 3 runs in 30).
    request_queue_size = 64


@pytest.fixture
def upstream_server():
    Upstreams.pair = threading.Barrier(2)
    server = UpstreamServer(("127.0.0.1", 0), Upstreams)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_aggregate_fetches_concurrently_and_reports_each_upstream(async_client, settings, upstream_server):
    settings.AGGREGATE_TIMEOUT = 1.0
    settings.AGGREGATE_UPSTREAMS = {
        "prices": f"{upstream_server}/prices",
        "inventory": f"{upstream_server}/inventory",
        "slow": f"{upstream_server}/slow",
        "broken": f"{upstream_server}/broken",
        "html": f"{upstream_server}/html",
        "closed": "http://127.0.0.1:9/",
        # Both answer only if fetched at the same time: fetched one after the other, both fail.
        "first": f"{upstream_server}/pair/1",
        "second": f"{upstream_server}/pair/2",
    }
    response = await async_client.get("/api/aggregate/")
    body = response.json()
    assert response.status_code == 200
    ups = body["upstreams"]
    assert ups["prices"] == {
        "ok": True,
        "status": 200,
        "data": {"path": "/prices"},
        "latency_ms": ups["prices"]["latency_ms"],
    }
    assert ups["inventory"]["data"] == {"path": "/inventory"}
    assert ups["slow"]["ok"] is False
    assert "timed out" in ups["slow"]["error"]
    assert ups["broken"] == {"ok": False, "status": 500, "error": "HTTP 500", "latency_ms": ups["broken"]["latency_ms"]}
    assert ups["html"]["error"] == "response is not JSON"
    assert ups["closed"]["ok"] is False
    assert body["complete"] is False
    assert sorted(body["failed"]) == ["broken", "closed", "html", "slow"]
    # Concurrent: the two paired upstreams were in flight together.
    assert ups["first"]["data"] == {"path": "/pair/1"}
    assert ups["second"]["data"] == {"path": "/pair/2"}


async def test_aggregate_all_down_is_502(async_client, settings):
    settings.AGGREGATE_UPSTREAMS = {"closed": "http://127.0.0.1:9/"}
    assert (await async_client.get("/api/aggregate/")).status_code == 502
