"""Every way the app's WebSockets answer bad input or refuse a client: the one reference.

Handshake refusals (before the socket is accepted) reach the client as HTTP 403:
  - anonymous user on an endpoint that needs a login (notifications, orders)
  - Origin not in ALLOWED_HOSTS (AllowedHostsOriginValidator)
  - unknown path under /ws/

Close codes (after accept). An application may only send 1000 or 3000-4999
(RFC 6455 7.4.2; daphne raises on anything else, and the consumer would die
before giving back its slot), so the app's own codes are 4000 + the nearest
protocol or HTTP code:
  - 1000  normal closure
  - 4001  GOING_AWAY: the process serving the socket is stopping (a deploy, a
          host taken out, systemctl stop); reconnect at once, with a little
          jitter: nginx sends the new socket to another instance. The
          protocol's own 1001, which only the server library may send
  - 4009  MESSAGE_TOO_BIG: a frame over WS_MAX_MESSAGE_BYTES (default 64 KiB);
          the protocol's own 1009, which only the server library may send
  - 1006  (no close frame) a text frame that is not valid UTF-8: daphne drops
          the connection itself, before the app sees the frame
  - 4429  TOO_MANY_CONNECTIONS: the user already holds WS_MAX_CONNECTIONS_PER_USER
          sockets on this endpoint, counted across every daphne process and host

Error frames (the socket stays open): {"type": "error", "error": CODE, "detail": "..."}
  - invalid_json          text frame that is not JSON
  - invalid_message       JSON that is not an object
  - unknown_type          "type" names no action of this endpoint
  - invalid_field         a field is missing or has the wrong type or range
  - binary_not_supported  binary frame (the protocol is JSON text)
  - not_found             order that does not exist or is not yours (indistinguishable)
  - internal_error        the server failed handling this message; retry later
"""

GOING_AWAY = 4001
MESSAGE_TOO_BIG = 4009
TOO_MANY_CONNECTIONS = 4429

INVALID_JSON = "invalid_json"
INVALID_MESSAGE = "invalid_message"
UNKNOWN_TYPE = "unknown_type"
INVALID_FIELD = "invalid_field"
BINARY_NOT_SUPPORTED = "binary_not_supported"
NOT_FOUND = "not_found"
INTERNAL_ERROR = "internal_error"
