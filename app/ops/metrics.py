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
WS_BAD_INPUT = Counter("websocket_bad_input", "Frames answered with an error, by error code.", ["consumer", "error"])

GROUP_SEND_SECONDS = Histogram(
    "channel_layer_group_send_seconds",
    "Time to hand one group_send to the channel layer.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LAYER_ERRORS = Counter("channel_layer_errors", "Channel layer operations that failed.", ["operation"])

HTTP_REQUESTS = Counter("http_requests", "HTTP requests served.", ["view", "method", "status"])
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency.",
    ["view", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
