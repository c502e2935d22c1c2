"""An order's owner is told when its status changes, once the change is committed."""

import logging
from functools import partial

from django.db import transaction
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver

from notifications.services import send_notification
from orders.models import Order
from orders.services import status_message

log = logging.getLogger(__name__)


@receiver(pre_save, sender=Order)
def remember_status(sender, instance: Order, **kwargs) -> None:
    instance._previous_status = (
        Order.objects.filter(pk=instance.pk).values_list("status", flat=True).first() if instance.pk else None
    )


def _notify(user_id: int, message: str) -> None:
    try:
        send_notification(user_id, message)
    except Exception:
        # The order is saved; a lost notification must not turn that into an error.
        log.exception("order notification failed", extra={"user_id": user_id})


@receiver(post_save, sender=Order)
def notify_status_change(sender, instance: Order, created: bool, **kwargs) -> None:
    previous = getattr(instance, "_previous_status", None)
    if created or previous is None or previous == instance.status:
        return
    transaction.on_commit(partial(_notify, instance.owner_id, status_message(instance)))
