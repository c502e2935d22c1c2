"""Sending a notification to every open socket of one user, from anywhere."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from ops.metrics import NOTIFICATION_RECIPIENTS
from realtime import bridge
from realtime.layer import group_send


def group_name(user_id: int) -> str:
    return f"notifications_{user_id}"


def event(message: str) -> dict:
    return {"type": "notification.message", "message": message, "timestamp": timezone.now().isoformat()}


async def asend_notification(user_id: int, message: str) -> None:
    """From async code (consumers, async views); raises TimeoutError after NOTIFY_SEND_TIMEOUT.

    Each socket the notification was addressed to counts in
    notifications_recipients_total; each one it reached counts in
    notifications_delivered_total (the consumer). Their difference is what was
    accepted and never delivered: the NotificationsLost alert.

    Without a master (a failover in progress, every Redis down) the layer's
    connections keep retrying for REDIS_RETRY_SECONDS; callers answering an
    HTTP request must fail fast instead; and while a shard has just run out of
    that time, calls that need it are refused at once (realtime.layer.bounded).
    """
    recipients = await group_send(group_name(user_id), event(message), within=settings.NOTIFY_SEND_TIMEOUT)
    if recipients:
        NOTIFICATION_RECIPIENTS.inc(recipients)


def send_notification(user_id: int, message: str) -> None:
    """From sync code: views, signals, management commands, tasks.

    Reaches the user's sockets on every daphne process through the channel
    layer; raises if the layer is unreachable or has no master for
    NOTIFY_SEND_TIMEOUT seconds. The process's layer connections are reused
    from call to call (realtime/bridge.py).
    """
    bridge.call(asend_notification, user_id, message)
