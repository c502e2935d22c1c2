"""Abuse limits at the load balancer, tried from outside: a body over the limit is refused
before any backend reads it, and a client that trickles its headers or its body is cut off
after the site's timeouts, while a well-behaved client beside it is served."""

from __future__ import annotations

import re
import socket
import ssl
import time

import pytest

from tests.replicas.conftest import fact, first

# Seconds allowed past nginx's timeout for its timer to fire and the close to arrive.
SLACK = 5


@pytest.fixture(scope="module")
def limits(converged, stack, hosts) -> dict[str, str]:
    """The site's limits as nginx on the lb runs them (its rendered configuration)."""
    site = hosts[first("lb")].file("/etc/nginx/sites-enabled/channels.conf").content_string
    names = ("client_max_body_size", "client_header_timeout", "client_body_timeout")
    return {name: re.search(rf"^\s*{name} (\S+);", site, re.M).group(1) for name in names}


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def size(value: str) -> int:
    units = {"k": 1024, "m": 1024 * 1024}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].lower() in units else int(value)


def tls_to(site, lb: str) -> ssl.SSLSocket:
    raw = socket.create_connection((lb, fact("nginx_https_port")), timeout=60)
    return site["ssl"].wrap_socket(raw, server_hostname=lb)


def held_until_closed(tls: ssl.SSLSocket, since: float) -> tuple[float, bytes]:
    """Seconds from `since` until the server closed the connection, and what it sent before."""
    answer = b""
    try:
        while chunk := tls.recv(4096):
            answer += chunk
    except (ssl.SSLEOFError, ConnectionResetError):
        pass  # a timed-out connection is closed without TLS's close_notify
    return time.monotonic() - since, answer


def test_a_body_over_the_limit_is_refused_by_nginx(site, limits):
    too_big = b"x" * (size(limits["client_max_body_size"]) + 1)
    response = site["client"].post(
        "/api/notifications/",
        content=too_big,
        headers={"Authorization": f"Bearer {site['token']}", "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert "nginx" in response.text.lower()  # nginx's own page: no backend saw the request


@pytest.mark.parametrize(
    ("timeout", "request_start"),
    [
        # Headers never finished.
        ("client_header_timeout", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"),
        # Headers complete, then 10 of the 1,000 bytes announced, then nothing.
        (
            "client_body_timeout",
            b"POST /api/notifications/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"user_id"',
        ),
    ],
)
def test_a_client_that_stalls_is_cut_off_while_others_are_served(site, stack, limits, timeout, request_start):
    lb = stack.address(first("lb"))
    bound = seconds(limits[timeout])
    with tls_to(site, lb) as slow:
        # nginx's header timer runs from the connection's start, its body timer from the last read.
        stalled_at = time.monotonic()
        slow.sendall(request_start)
        # Another client meanwhile: served as usual.
        assert site["client"].get("/healthz").status_code == 200
        held, answer = held_until_closed(slow, stalled_at)
    print(f"\nfigure: stalled client ({timeout} {limits[timeout]}) cut off after {held:.1f} s")
    assert bound - 1 <= held <= bound + SLACK
    # nginx closes without a response, or with its 408 page: never a backend's answer.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
