import asyncio
import json
import time

import pytest
from django.core.management import CommandError, call_command

from notifications import views

pytestmark = pytest.mark.django_db

URL = "/api/notifications/"
TOKEN = "test-notify-token-0123456789abcdef"


@pytest.fixture
def sent(monkeypatch):
    calls = []
    monkeypatch.setattr(views, "send_notification", lambda user_id, message: calls.append((user_id, message)))
    return calls


def post(client, body, **headers):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(URL, data=data, content_type="application/json", headers=headers)


def test_bearer_token_queues_a_notification(client, user, sent):
    response = post(client, {"user_id": user.pk, "message": "hi"}, Authorization=f"Bearer {TOKEN}")
    assert response.status_code == 202
    assert response.json() == {"status": "queued", "user_id": user.pk}
    assert sent == [(user.pk, "hi")]


def test_missing_credentials_is_401_with_a_challenge(client, user, sent):
    response = post(client, {"user_id": user.pk, "message": "hi"})
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert sent == []


@pytest.mark.parametrize("header", ["Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"])
def test_wrong_credentials_are_403(client, user, sent, header):
    assert post(client, {"user_id": user.pk, "message": "hi"}, Authorization=header).status_code == 403
    assert sent == []


def test_no_configured_token_refuses_every_bearer(client, user, sent, settings):
    settings.NOTIFY_API_TOKEN = None
    assert post(client, {"user_id": user.pk, "message": "x"}, Authorization=f"Bearer {TOKEN}").status_code == 403


def test_non_staff_session_is_403(client, user, sent):
    client.force_login(user)
    assert post(client, {"user_id": user.pk, "message": "hi"}).status_code == 403


def test_staff_session_needs_and_accepts_the_csrf_token(user, staff, sent):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    assert post(client, {"user_id": user.pk, "message": "hi"}).status_code == 403
    client.get("/")  # the page sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = post(client, {"user_id": user.pk, "message": "hi"}, **{"X-CSRFToken": token})
    assert response.status_code == 202
    assert sent == [(user.pk, "hi")]


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        b"\xff\xfe",
        "[1]",
        {"message": "no user"},
        {"user_id": "1", "message": "hi"},
        {"user_id": True, "message": "hi"},
        {"user_id": 0, "message": "hi"},
        {"user_id": 1},
        {"user_id": 1, "message": "   "},
        {"user_id": 1, "message": "x" * 2001},
        {"user_id": 1, "message": 5},
        {"user_id": 999999, "message": "nobody"},
    ],
)
def test_bad_bodies_are_400_with_a_json_error(client, user, sent, body):
    response = post(client, body, Authorization=f"Bearer {TOKEN}")
    assert response.status_code == 400
    assert response.json()["error"]
    assert sent == []


def test_only_post_is_allowed(client):
    assert client.get(URL).status_code == 405


def test_layer_failure_is_503(client, user, monkeypatch):
    def broken(user_id, message):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(views, "send_notification", broken)
    response = post(client, {"user_id": user.pk, "message": "hi"}, Authorization=f"Bearer {TOKEN}")
    assert response.status_code == 503


def test_a_layer_without_a_master_fails_fast_with_retry_after(client, user, settings, monkeypatch):
    """No master (a failover in progress): the layer would retry for REDIS_RETRY_SECONDS."""
    from realtime import layer

    class Stalled:
        async def group_send(self, group, message):
            await asyncio.sleep(30)

    settings.NOTIFY_SEND_TIMEOUT = 0.3
    monkeypatch.setattr(layer, "get_channel_layer", Stalled)
    started = time.monotonic()
    response = post(client, {"user_id": user.pk, "message": "hi"}, Authorization=f"Bearer {TOKEN}")
    assert response.status_code == 503
    assert response["Retry-After"] == str(views.RETRY_AFTER_SECONDS)
    assert time.monotonic() - started < 3


def test_a_paused_shard_is_503_with_retry_after_and_one_log_line(client, user, monkeypatch, caplog):
    from config.redis import ShardPaused

    def paused(user_id, message):
        raise ShardPaused("channel layer shard 1 paused for 0.8 s more")

    monkeypatch.setattr(views, "send_notification", paused)
    response = post(client, {"user_id": user.pk, "message": "hi"}, Authorization=f"Bearer {TOKEN}")
    assert response.status_code == 503
    assert response["Retry-After"] == str(views.RETRY_AFTER_SECONDS)
    [record] = [r for r in caplog.records if r.name == views.log.name]
    assert record.exc_info is None
    assert "shard 1 paused" in record.getMessage()


def test_notify_command(user, monkeypatch):
    calls = []
    monkeypatch.setattr(
        "notifications.management.commands.notify.send_notification",
        lambda user_id, message: calls.append((user_id, message)),
    )
    call_command("notify", "alice", "from the shell")
    assert calls == [(user.pk, "from the shell")]
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        call_command("notify", "nobody", "x")
