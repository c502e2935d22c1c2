from ops.metrics import NOTIFICATIONS_DELIVERED
from realtime.consumers import AppConsumer

from .services import group_name


class NotificationConsumer(AppConsumer):
    """/ws/notifications/: everything sent to the logged-in user, live."""

    endpoint = "notifications"

    async def on_connect(self) -> None:
        await self.join(group_name(self.user.pk))

    async def notification_message(self, event: dict) -> None:
        await self.send_json({"type": "notification", "message": event["message"], "timestamp": event["timestamp"]})
        NOTIFICATIONS_DELIVERED.inc()
