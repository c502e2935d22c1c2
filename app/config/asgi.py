"""ASGI entry point for daphne: HTTP to Django, WebSockets to the consumers."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Set up Django (apps, models) before anything imports consumers or models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from config.routing import websocket_urlpatterns  # noqa: E402
from realtime import drain  # noqa: E402
from realtime.auth import SessionAuthMiddleware  # noqa: E402

# SIGUSR1: close every socket with GOING_AWAY, then stop (the daphne unit's ExecStop).
drain.install()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(SessionAuthMiddleware(URLRouter(websocket_urlpatterns))),
    }
)
