"""Messages reach handlers without a hop to Django's sync thread, and no endpoint needs that hop."""

import ast
from pathlib import Path

import channels.consumer
import pytest

from live.ticks import event
from realtime.layer import group_send
from testing import connect

pytestmark = pytest.mark.django_db(transaction=True)
APP = Path(__file__).resolve().parents[2]


async def test_a_socket_is_served_without_closing_old_connections_before_each_message(monkeypatch, settings):
    hops = []

    async def close_old_connections():
        hops.append(1)

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", close_old_connections)
    settings.LIVE_BATCH_INTERVAL = 0.05
    communicator, accepted, _ = await connect("/ws/live/")
    assert accepted
    await group_send(settings.LIVE_GROUP, event({"symbol": "ACME", "price": 1.0, "ts": "2026-01-01T00:00:00+00:00"}))
    assert (await communicator.receive_json_from(timeout=2))["type"] == "batch"
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(timeout=2) == {"type": "pong"}
    await communicator.disconnect()
    assert hops == []


def database_calls_outside_database_sync_to_async(source: str) -> list[str]:
    """Functions of a module that use the ORM (``.objects``) without the database_sync_to_async decorator."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        decorators = {ast.unparse(d) for d in node.decorator_list}
        uses_orm = any(isinstance(n, ast.Attribute) and n.attr == "objects" for n in ast.walk(node))
        if uses_orm and "database_sync_to_async" not in decorators:
            found.append(node.name)
    return found


def test_every_endpoint_reaches_the_database_only_through_database_sync_to_async():
    modules = sorted(APP.glob("*/consumers.py"))
    assert len(modules) >= 4  # realtime, live, notifications, orders
    for module in modules:
        source = module.read_text()
        assert "import sync_to_async" not in source, module
        assert database_calls_outside_database_sync_to_async(source) == [], module
    # The check sees what it must refuse.
    assert database_calls_outside_database_sync_to_async("async def f():\n    User.objects.get()\n") == ["f"]
