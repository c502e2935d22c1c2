"""A SECRET_KEY rotation keeps every session on the WebSocket pool, as on the HTTP side."""

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import HASH_SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from django.test import override_settings

from testing import connect, session_headers

pytestmark = pytest.mark.django_db(transaction=True)

OLD, NEW, OTHER = ("old-key-" + "o" * 40, "new-key-" + "n" * 40, "other-key-" + "x" * 40)


def session_key(headers) -> str:
    cookie = dict(headers)[b"cookie"].decode()
    return cookie.split("=", 1)[1]


def held_hash(key: str) -> str | None:
    return SessionStore(session_key=key).load().get(HASH_SESSION_KEY)


async def opens(headers) -> bool:
    communicator, accepted, _ = await connect("/ws/notifications/", headers)
    if accepted:
        await communicator.disconnect()
    return accepted


async def test_a_session_from_before_the_rotation_opens_sockets_again_and_again(user):
    with override_settings(SECRET_KEY=OLD):
        headers = await sync_to_async(session_headers)(user)
        before = await sync_to_async(held_hash)(session_key(headers))
    with override_settings(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[OLD]):
        # The first handshake moves the session's hash to the new key, under the same cookie...
        assert await opens(headers)
        after = await sync_to_async(held_hash)(session_key(headers))
        assert after != before
        assert after == await sync_to_async(user.get_session_auth_hash)()
        # ...so the next reconnect (the cookie unchanged: a handshake cannot set one) opens too.
        assert await opens(headers)
    # Once the fallback is dropped, the session still holds (its hash is the new key's).
    with override_settings(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[]):
        assert await opens(headers)


async def test_without_the_old_key_as_a_fallback_the_session_ends(user):
    with override_settings(SECRET_KEY=OLD):
        headers = await sync_to_async(session_headers)(user)
    with override_settings(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[OTHER]):
        # The session's data is signed too: without the old key it reads as empty, anonymous.
        assert not await opens(headers)


async def test_a_changed_password_ends_the_session_whatever_the_fallbacks(user):
    with override_settings(SECRET_KEY=OLD):
        headers = await sync_to_async(session_headers)(user)
    user.set_password("a-new-password-123")
    await sync_to_async(user.save)()
    with override_settings(SECRET_KEY=NEW, SECRET_KEY_FALLBACKS=[OLD]):
        assert not await opens(headers)


async def test_a_session_naming_no_user_id_is_anonymous(user):
    store = SessionStore()
    store["_auth_user_id"], store["_auth_user_backend"] = "not-a-number", "django.contrib.auth.backends.ModelBackend"
    await sync_to_async(store.create)()
    headers = [(b"origin", b"http://testserver"), (b"cookie", f"sessionid={store.session_key}".encode())]
    assert not await opens(headers)
