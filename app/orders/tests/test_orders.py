import pytest
from asgiref.sync import sync_to_async
from django.db import transaction

from orders.models import Order
from orders.services import process_order
from realtime import closecodes
from testing import connect, session_headers

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def order(user):
    return Order.objects.create(owner=user, description="two widgets")


async def test_owner_gets_the_order(order, auth_headers):
    communicator, accepted, _ = await connect("/ws/orders/", auth_headers)
    assert accepted
    await communicator.send_json_to({"order_id": order.pk})
    answer = await communicator.receive_json_from()
    assert answer["type"] == "order"
    assert answer["order"]["id"] == order.pk
    assert answer["order"]["status"] == "pending"
    assert answer["order"]["description"] == "two widgets"
    await communicator.disconnect()


async def test_explicit_type_is_accepted(order, auth_headers):
    communicator, _, _ = await connect("/ws/orders/", auth_headers)
    await communicator.send_json_to({"type": "order.get", "order_id": order.pk})
    assert (await communicator.receive_json_from())["order"]["id"] == order.pk
    await communicator.disconnect()


async def test_another_users_order_looks_exactly_like_a_missing_one(order, other_user):
    headers = await sync_to_async(session_headers)(other_user)
    communicator, _, _ = await connect("/ws/orders/", headers)
    await communicator.send_json_to({"order_id": order.pk})
    foreign = await communicator.receive_json_from()
    await communicator.send_json_to({"order_id": order.pk + 1000})
    missing = await communicator.receive_json_from()
    assert foreign["error"] == missing["error"] == closecodes.NOT_FOUND
    assert {k: v for k, v in foreign.items() if k != "order_id"} == {
        k: v for k, v in missing.items() if k != "order_id"
    }
    assert "two widgets" not in str(foreign)
    await communicator.disconnect()


async def test_anonymous_handshake_is_rejected():
    _, accepted, _ = await connect("/ws/orders/")
    assert accepted is False


async def test_processing_an_order_notifies_its_owner(order, auth_headers):
    notifications, _, _ = await connect("/ws/notifications/", auth_headers)
    await sync_to_async(process_order)(order)
    message = await notifications.receive_json_from()
    assert message["type"] == "notification"
    assert message["message"] == f"Your order #{order.pk} has been processed"
    await notifications.disconnect()


async def test_other_status_changes_notify_too_and_unchanged_saves_do_not(order, auth_headers):
    notifications, _, _ = await connect("/ws/notifications/", auth_headers)

    def change():
        order.status = Order.Status.CANCELLED
        order.save()
        order.description = "edited"
        order.save()  # status unchanged: no second notification

    await sync_to_async(change)()
    assert (await notifications.receive_json_from())["message"] == f"Your order #{order.pk} is now cancelled"
    assert await notifications.receive_nothing(timeout=0.3)
    await notifications.disconnect()


async def test_no_notification_for_a_rolled_back_change(order, auth_headers):
    notifications, _, _ = await connect("/ws/notifications/", auth_headers)

    def change_then_fail():
        with transaction.atomic():
            process_order(order)
            raise RuntimeError("payment declined")

    with pytest.raises(RuntimeError, match="payment declined"):
        await sync_to_async(change_then_fail)()
    assert await notifications.receive_nothing(timeout=0.3)
    await notifications.disconnect()
