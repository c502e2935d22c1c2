"""Every Prometheus metric the app exports, defined once.

Under gunicorn, PROMETHEUS_MULTIPROC_DIR is set and values live in per-worker
files that /metrics aggregates; each daphne process serves its own registry on
its own port, and Prometheus sums across instances.
"""

from prometheus_client import Counter, Gauge, Histogram

WS_CONNECTIONS = Gauge(
    "websocket_connections",
    "Open WebSocket connections.",
    ["consumer"],
    multiprocess_mode="livesum",
)
WS_OPENED = Counter("websocket_connections_opened", "WebSocket connections accepted.", ["consumer"])
WS_CLOSED = Counter("websocket_connections_closed", "WebSocket connections closed after accept.", ["consumer"])
WS_REJECTED = Counter(
    "websocket_connections_rejected", "WebSocket connections refused, by reason.", ["consumer", "reason"]
)
WS_RECEIVED = Counter("websocket_messages_received", "WebSocket frames received.", ["consumer"])
WS_SENT = Counter("websocket_messages_sent", "WebSocket frames sent.", ["consumer"])
WS_STATE_LOST = Counter(
    "websocket_state_lost",
    "Open sockets that found their Redis state (connection slot, hence group memberships) gone and restored it.",
    ["consumer"],
)
WS_DRAINED = Counter(
    "websocket_connections_drained",
    "Sockets closed with GOING_AWAY (4001) because their process was stopping.",
)
WS_BAD_INPUT = Counter("websocket_bad_input", "Frames answered with an error, by error code.", ["consumer", "error"])

# Accepted notifications that never reached a socket: recipients minus delivered
# (summed over both pools; the NotificationsLost alert). A recipient is a
# member of the user's group when the notification was sent.
NOTIFICATION_RECIPIENTS = Counter(
    "notifications_recipients", "Sockets the notifications accepted by the channel layer were addressed to."
)
NOTIFICATIONS_DELIVERED = Counter("notifications_delivered", "Notifications written to a socket.")

GROUP_SEND_SECONDS = Histogram(
    "channel_layer_group_send_seconds",
    "Time to hand one group_send to the channel layer.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LAYER_ERRORS = Counter("channel_layer_errors", "Channel layer operations that failed.", ["operation"])

# accounts/throttle.py: an account past its failed logins is refused before its password is checked.
LOGINS_REFUSED = Counter("logins_refused", "Logins refused before the password was checked, by reason.", ["reason"])

# 1 in every live gunicorn worker: summed, the pool's live workers.
HTTP_WORKERS = Gauge("gunicorn_workers", "Live gunicorn workers.", multiprocess_mode="livesum")
HTTP_REQUESTS = Counter("http_requests", "HTTP requests served.", ["view", "method", "status"])
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency.",
    ["view", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# Label values known up front are exported from the start, at 0: an error or
# rejection rate then reads 0 instead of "no data" until the first one.
for _operation in ("group_send", "group_discard", "refresh", "receive"):
    LAYER_ERRORS.labels(_operation)
for _consumer in ("notifications", "orders", "live"):
    WS_STATE_LOST.labels(_consumer)
    for _reason in ("unauthenticated", "connection_limit", "draining"):
        WS_REJECTED.labels(_consumer, _reason)
WS_REJECTED.labels("not_found", "no_route")
LOGINS_REFUSED.labels("account_throttled")
