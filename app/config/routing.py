"""Every WebSocket endpoint; anything else under ws/ is refused at the handshake."""

from django.urls import re_path

from live.routing import websocket_urlpatterns as live
from notifications.routing import websocket_urlpatterns as notifications
from orders.routing import websocket_urlpatterns as orders
from realtime.consumers import NotFoundConsumer

websocket_urlpatterns = [*notifications, *orders, *live, re_path(r"", NotFoundConsumer.as_asgi())]
