from orders.models import Order


def process_order(order: Order) -> Order:
    """Mark an order processed; its owner is notified when the change commits (orders.signals)."""
    order.status = Order.Status.PROCESSED
    order.save(update_fields=["status", "updated_at"])
    return order


def status_message(order: Order) -> str:
    if order.status == Order.Status.PROCESSED:
        return f"Your order #{order.pk} has been processed"
    return f"Your order #{order.pk} is now {order.get_status_display().lower()}"
