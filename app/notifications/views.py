"""POST /api/notifications/: how the HTTP pool reaches sockets held by the WebSocket pool."""

from __future__ import annotations

import hmac
import json
import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from config.redis import ShardPaused

from .services import send_notification

log = logging.getLogger(__name__)
MAX_MESSAGE_LENGTH = 2000
# When a client may try again after a 503: about one Sentinel failover
# (down-after-milliseconds, 5 s by default, plus the election).
RETRY_AFTER_SECONDS = 5


def _error(status: int, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


def _authorize(request: HttpRequest) -> JsonResponse | None:
    """A bearer token from settings, or a staff session (with its CSRF token)."""
    header = request.headers.get("Authorization")
    if header:
        scheme, _, token = header.partition(" ")
        expected = settings.NOTIFY_API_TOKEN
        if scheme.lower() != "bearer" or not expected or not hmac.compare_digest(token.strip(), expected):
            return _error(403, "invalid credentials")
        return None
    if not request.user.is_authenticated:
        return _error(401, "authentication required", **{"WWW-Authenticate": 'Bearer realm="notifications"'})
    if not request.user.is_staff:
        return _error(403, "staff only")
    # The view is csrf_exempt for token clients; sessions still need the CSRF check.
    if CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {}) is not None:
        return _error(403, "CSRF check failed")
    return None


@csrf_exempt
@require_POST
def notifications_api(request: HttpRequest) -> JsonResponse:
    denied = _authorize(request)
    if denied:
        return denied
    try:
        payload = json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "body is not valid JSON")
    if not isinstance(payload, dict):
        return _error(400, "body must be a JSON object")
    user_id, message = payload.get("user_id"), payload.get("message")
    if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id < 1:
        return _error(400, "user_id must be a positive integer")
    if not isinstance(message, str) or not message.strip() or len(message) > MAX_MESSAGE_LENGTH:
        return _error(400, f"message must be a non-empty string of at most {MAX_MESSAGE_LENGTH} characters")
    if not get_user_model().objects.filter(pk=user_id, is_active=True).exists():
        return _error(400, "user_id names no active user")
    try:
        send_notification(user_id, message)
    except Exception as error:
        if isinstance(error, ShardPaused):
            # Refused at once while its shard recovers: one line each, not a traceback.
            log.warning("notification refused: %s", error, extra={"user_id": user_id})
        else:
            log.exception("notification could not be queued", extra={"user_id": user_id})
        return _error(503, "channel layer unavailable", **{"Retry-After": str(RETRY_AFTER_SECONDS)})
    return JsonResponse({"status": "queued", "user_id": user_id}, status=202)
