"""The WebSocket pool's user, from the Django session, as Django's HTTP side finds it: with
SECRET_KEY_FALLBACKS.

A session holds an HMAC of its user's password hash made with SECRET_KEY. channels.auth checks
it against SECRET_KEY only and flushes the session when it does not match: after a SECRET_KEY
rotation every socket coming back from the rolling restart would be refused, and its user
logged out of the site too, although Django's HTTP side accepts the session through
SECRET_KEY_FALLBACKS. Here a hash made with a fallback key is accepted and rewritten with the
current key, under the same session key: Django's HTTP side gives the session a new key
(cycle_key) with a new cookie, which a WebSocket handshake's answer cannot set. Any other
mismatch (the password changed) ends the session, as on the HTTP side.
"""

from __future__ import annotations

from importlib import import_module

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.http import parse_cookie
from django.utils.crypto import constant_time_compare


def user_of(session):
    """The session's user, or AnonymousUser; the session's hash moved to SECRET_KEY when it was
    made with one of SECRET_KEY_FALLBACKS."""
    backend_path = session.get(BACKEND_SESSION_KEY)
    if SESSION_KEY not in session or backend_path not in settings.AUTHENTICATION_BACKENDS:
        return AnonymousUser()
    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
    except ValidationError:  # not an id: a session not written by a login
        return AnonymousUser()
    user = load_backend(backend_path).get_user(user_id)
    if user is None:
        return AnonymousUser()
    if not hasattr(user, "get_session_auth_hash"):
        return user
    held = session.get(HASH_SESSION_KEY) or ""
    if held and constant_time_compare(held, user.get_session_auth_hash()):
        return user
    if held and any(constant_time_compare(held, old) for old in user.get_session_auth_fallback_hash()):
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        return user
    session.flush()
    return AnonymousUser()


class SessionAuthMiddleware:
    """A socket's cookies, session and user, into its scope as channels.auth's AuthMiddlewareStack
    puts them (``cookies``, ``session``, ``user``), with `user_of` instead of channels.auth.get_user.

    One copy of the scope, where channels' three middlewares make four: each copy, and each
    middleware's coroutine, lives as long as the socket (about 3 KiB a socket; README,
    Performance). WebSocket handshakes only: channels' session middleware saves a changed session
    and sets its cookie on an HTTP response, which a handshake never gets; `user_of` saves the
    one change it makes itself.
    """

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        header = next((value for name, value in scope["headers"] if name == b"cookie"), None)
        cookies = parse_cookie(header.decode("latin1")) if header is not None else {}
        session = import_module(settings.SESSION_ENGINE).SessionStore(cookies.get(settings.SESSION_COOKIE_NAME))
        user = await database_sync_to_async(user_of)(session)
        return await self.inner(dict(scope, cookies=cookies, session=session, user=user), receive, send)
