from channels.db import database_sync_to_async

from orders.models import Order
from realtime import closecodes
from realtime.consumers import AppConsumer

# The largest primary key (BigAutoField): a larger id would fail in the database, not as "not found".
MAX_ORDER_ID = 2**63 - 1


@database_sync_to_async
def get_own_order(user_id: int, order_id: int) -> dict | None:
    order = Order.objects.filter(pk=order_id, owner_id=user_id).first()
    return order.as_message() if order else None


class OrderConsumer(AppConsumer):
    """/ws/orders/: send {"order_id": N}, get {"type": "order", "order": {...}}."""

    endpoint = "orders"

    async def handle(self, content: dict) -> None:
        if content.get("type", "order.get") != "order.get":
            await super().handle(content)
            return
        order_id = content.get("order_id")
        if not isinstance(order_id, int) or isinstance(order_id, bool) or not 1 <= order_id <= MAX_ORDER_ID:
            await self.send_error(closecodes.INVALID_FIELD, "order_id must be a positive integer")
            return
        order = await get_own_order(self.user.pk, order_id)
        if order is None:
            # Missing and not-yours look the same: nothing leaks about other users' orders.
            await self.send_error(closecodes.NOT_FOUND, "no such order", order_id=order_id)
            return
        await self.send_json({"type": "order", "order": order})
