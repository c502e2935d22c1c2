"""The base every WebSocket endpoint of the app builds on.

It owns what all endpoints must get right the same way: login requirement,
the per-user connection limit, metrics, group membership with cleanup (and
its renewal, realtime/keeper.py), and
answers to bad input that never take the consumer or the process down
(documented in realtime/closecodes.py).
"""

from __future__ import annotations

import json
import logging
import secrets

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from ops.metrics import (
    LAYER_ERRORS,
    WS_BAD_INPUT,
    WS_CLOSED,
    WS_CONNECTIONS,
    WS_OPENED,
    WS_RECEIVED,
    WS_REJECTED,
    WS_SENT,
)
from realtime import closecodes, drain, limits
from realtime.keeper import keeper

log = logging.getLogger(__name__)


class AppConsumer(AsyncJsonWebsocketConsumer):
    #: metric label and connection-limit scope of this endpoint
    endpoint = "base"
    #: refuse the handshake to anonymous users
    login_required = True
    # Channels' `channel_layer_alias` names the layer on which each socket reads a channel of its
    # own: the messages of the groups it joins come through it. An endpoint whose messages reach
    # its sockets another way sets it to None, which spares each socket Channels' reader (a task,
    # and the layer's buffer queue with two more): about 8 KiB a socket (README, Performance).

    opened = False
    slot_held = False
    released = False
    memberships: tuple[str, ...] = ()

    # -- lifecycle -----------------------------------------------------------
    async def __call__(self, scope, receive, send):
        # Channels calls disconnect() only when the client's disconnect arrives.
        # A consumer also ends by an exception in any handler, by a failing
        # layer read, or by cancellation (daphne cancels every application at
        # shutdown and an unresponsive one after a disconnect): in each case
        # what the socket held is given back here.
        try:
            if self.channel_layer_alias is None:
                await self.serve_client_only(scope, receive, send)
            else:
                await super().__call__(scope, receive, send)
        finally:
            await self.release()

    async def serve_client_only(self, scope, receive, send) -> None:
        """Channels' AsyncConsumer.__call__ for a consumer without a channel of the layer: the
        client's events go straight to dispatch, without the task and the wait Channels'
        await_many_dispatch makes for each event of each source (about 2.5 KiB a socket)."""
        self.scope, self.channel_layer, self.base_send = scope, None, send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.memberships = []
        if self.channel_layer is None:
            # No channel of its own: a name unique to the socket still names its connection slot.
            self.channel_name = f"socket!{secrets.token_hex(12)}"
        authenticated = bool(self.user and self.user.is_authenticated)
        if self.login_required and not authenticated:
            WS_REJECTED.labels(self.endpoint, "unauthenticated").inc()
            await self.close()  # before accept: the client sees HTTP 403
            return
        if drain.draining():
            # This process is stopping: the client's next try goes to another instance.
            WS_REJECTED.labels(self.endpoint, "draining").inc()
            await self.accept()
            await self.close(code=closecodes.GOING_AWAY)
            return
        if authenticated:
            if not await limits.slots().acquire(self.endpoint, self.user.pk, self.channel_name):
                WS_REJECTED.labels(self.endpoint, "connection_limit").inc()
                # Accept first so the client receives the code (a pre-accept close is only a 403).
                await self.accept()
                await self.close(code=closecodes.TOO_MANY_CONNECTIONS)
                return
            self.slot_held = True
        await self.on_connect()
        await self.accept()
        self.opened = True
        drain.track(self)
        WS_OPENED.labels(self.endpoint).inc()
        WS_CONNECTIONS.labels(self.endpoint).inc()
        if self.slot_held or self.memberships:
            keeper().add(self)

    async def websocket_disconnect(self, message: dict) -> None:
        # Channels' own version would group_discard only class-level groups;
        # this one also undoes per-connection state, and never raises.
        try:
            await self.disconnect(message.get("code"))
        finally:
            raise StopConsumer()

    async def disconnect(self, code: int | None) -> None:
        await self.release()

    async def release(self) -> None:
        """Give back everything the socket holds: gauge, tasks, groups, slot. Runs once; never raises."""
        if self.released:
            return
        self.released = True
        try:
            if self.opened:
                self.opened = False
                WS_CONNECTIONS.labels(self.endpoint).dec()
                WS_CLOSED.labels(self.endpoint).inc()
            keeper().discard(self)
            try:
                await self.on_disconnect()
            except Exception:
                log.warning("on_disconnect failed", exc_info=True)
            await self.leave_groups()
            if self.slot_held:
                self.slot_held = False
                try:
                    await limits.slots().release(self.endpoint, self.user.pk, self.channel_name)
                except Exception:
                    # The slot lapses by itself after WS_CONNECTION_SLOT_TTL.
                    log.warning("connection slot release failed", exc_info=True)
        finally:
            # Last: a draining process waits for this before it stops.
            drain.untrack(self)

    async def leave_groups(self) -> None:
        """Out of every group it joined; a failure is counted and logged, never raised (the
        membership then lapses after the layer's group expiry)."""
        for group in self.memberships:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception:
                LAYER_ERRORS.labels("group_discard").inc()
                log.warning("group_discard failed", extra={"group": group}, exc_info=True)

    async def go_away(self) -> None:
        """Close with GOING_AWAY: the process is draining (realtime/drain.py)."""
        await self.close(code=closecodes.GOING_AWAY)

    async def dispatch(self, message: dict) -> None:
        """Run the message's handler, without Channels' hop to Django's sync thread before it.

        Channels' dispatch first closes stale database connections, in Django's
        one sync thread (``aclose_old_connections``): a thread round trip before
        every message, and every socket of the process queued on that one thread
        for every broadcast. Database access here goes only through
        ``database_sync_to_async``, which closes stale connections itself around
        each call (realtime/tests/test_dispatch.py holds every endpoint to that).
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.memberships.append(group)

    # -- hooks for endpoints -------------------------------------------------
    async def on_connect(self) -> None:
        """Join groups, start tasks; runs before accept."""

    async def on_disconnect(self) -> None:
        """Stop what on_connect started."""

    async def handle(self, content: dict) -> None:
        """A valid JSON object from the client, other than a ping."""
        await self.send_error(closecodes.UNKNOWN_TYPE, f"unknown message type {content.get('type')!r}")

    # -- input ---------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs) -> None:
        WS_RECEIVED.labels(self.endpoint).inc()
        size = len(bytes_data) if bytes_data is not None else len((text_data or "").encode())
        if size > settings.WS_MAX_MESSAGE_BYTES:
            WS_BAD_INPUT.labels(self.endpoint, "message_too_big").inc()
            await self.close(code=closecodes.MESSAGE_TOO_BIG)
            return
        if bytes_data is not None:
            await self.send_error(closecodes.BINARY_NOT_SUPPORTED, "send JSON text frames")
            return
        try:
            content = json.loads(text_data or "")
        except ValueError:
            await self.send_error(closecodes.INVALID_JSON, "frame is not valid JSON")
            return
        if not isinstance(content, dict):
            await self.send_error(closecodes.INVALID_MESSAGE, "expected a JSON object")
            return
        try:
            if content.get("type") == "ping":
                await self.send_json({"type": "pong"})
            else:
                await self.handle(content)
        except Exception:
            log.exception("error handling a client message", extra={"endpoint": self.endpoint})
            await self.send_error(closecodes.INTERNAL_ERROR, "the server could not handle this message")

    # -- output --------------------------------------------------------------
    # Both paths out are counted: channels' send_json calls the parent class's
    # send directly, past any override of send here.
    async def send(self, text_data=None, bytes_data=None, close=False) -> None:
        if text_data is not None or bytes_data is not None:
            WS_SENT.labels(self.endpoint).inc()
        await super().send(text_data=text_data, bytes_data=bytes_data, close=close)

    async def send_json(self, content, close=False) -> None:
        WS_SENT.labels(self.endpoint).inc()
        await super().send_json(content, close=close)

    async def send_error(self, code: str, detail: str, **extra) -> None:
        WS_BAD_INPUT.labels(self.endpoint, code).inc()
        await self.send_json({"type": "error", "error": code, "detail": detail, **extra})


class NotFoundConsumer(AppConsumer):
    """Any /ws/ path without an endpoint: refused at the handshake (HTTP 403)."""

    endpoint = "not_found"

    async def connect(self) -> None:
        WS_REJECTED.labels(self.endpoint, "no_route").inc()
        await self.close()
