"""Abuse limits, tried from outside through nginx: a body over the limit is refused before any
backend reads it; a client that trickles its headers or its body is cut off after the site's
timeouts; WebSocket handshakes and login attempts past an address's rate are answered 429; an
account past its failed logins is refused whatever the address. Each while others are served.

The load client's addresses (`client_addresses`) stand in for abusers; each test takes its own
index of them, so one test's spent allowance never meets the next."""

from __future__ import annotations

import asyncio
import base64
import collections
import math
import re
import secrets as random
import socket
import ssl
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from bench.load import login, login_attempt
from tests.replicas.conftest import fact, first, names, open_ws

# Seconds allowed past nginx's timeout for its timer to fire and the close to arrive.
SLACK = 5


@pytest.fixture(scope="module")
def limits(converged, stack, hosts) -> dict[str, str]:
    """The site's limits as nginx on the lb runs them (its rendered configuration)."""
    site = hosts[first("lb")].file("/etc/nginx/sites-enabled/channels.conf").content_string
    settings = ("client_max_body_size", "client_header_timeout", "client_body_timeout")
    limits = {name: re.search(rf"^\s*{name} (\S+);", site, re.M).group(1) for name in settings}
    # Request rates: per zone, (requests per second, burst).
    for zone, number, unit in re.findall(r"^limit_req_zone \S+ zone=(\w+):\S+ rate=(\d+)r/([sm]);", site, re.M):
        burst = re.search(rf"^\s*limit_req zone={zone} burst=(\d+) nodelay;", site, re.M).group(1)
        limits[zone] = (int(number) / (1 if unit == "s" else 60), int(burst))
    return limits


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


def within_rate(passed: int, rate: float, burst: int, seconds: float) -> bool:
    """nginx's leaky bucket with nodelay: the burst (and the one request it starts from) at once, then the rate."""
    return burst <= passed <= burst + 1 + math.ceil(rate * seconds)


async def test_handshakes_past_an_addresss_rate_are_refused_429_while_other_addresses_connect(
    site, limits, client_addresses
):
    rate, burst = limits["channels_ws_handshakes"]
    abuser = client_addresses[0]
    gate = asyncio.Semaphore(20)

    async def handshake(source: str | None) -> int:
        async with gate:
            try:
                ws = await open_ws(site, "/ws/live/", session=False, source=source)
            except InvalidStatus as refused:
                return refused.response.status_code
            await ws.close()
            return 101

    # Rounds of handshakes from the abuser, each with one from another address beside them,
    # until nginx has refused a round's worth (bounded: three bursts and a hundred).
    abused, others = [], []
    started = time.monotonic()
    while abused.count(429) < 20 and len(abused) < 3 * burst + 100:
        *round_, other = await asyncio.gather(*(handshake(abuser) for _ in range(20)), handshake(None))
        abused += round_
        others.append(other)
    seconds = time.monotonic() - started
    attempts, passed, refused = len(abused), abused.count(101), abused.count(429)
    # Then the address is forgiven at the rate: after burst/rate seconds nothing is held against it.
    await asyncio.sleep(burst / rate + 1)
    assert await handshake(abuser) == 101
    print(
        f"\nfigure: {attempts} WebSocket handshakes from one address in {seconds:.1f} s "
        f"(rate {rate:g}/s, burst {burst}): {passed} passed, {refused} refused 429"
    )
    assert passed + refused == attempts, abused
    assert refused >= 20
    assert within_rate(passed, rate, burst, seconds), (passed, seconds)
    assert others == [101] * len(others), others  # the other address was never refused


def site_client(site, source: str | None) -> httpx.Client:
    transport = httpx.HTTPTransport(verify=site["ssl"], local_address=source)
    return httpx.Client(base_url=site["base"], transport=transport, timeout=20)


def test_login_attempts_past_an_addresss_rate_are_refused_429_while_other_addresses_log_in(
    site, limits, client_addresses, secrets
):
    rate, burst = limits["channels_logins"]
    attempts = burst + 5
    statuses, answers = [], []
    with site_client(site, client_addresses[1]) as client:
        started = time.monotonic()
        for _ in range(attempts):
            # A new unknown name each time: the app's limit per account stays out of it.
            answer = login_attempt(client, f"nobody-{random.token_hex(4)}", "wrong")
            statuses.append(answer.status_code)
            answers.append(answer)
        seconds = time.monotonic() - started
        # The login page itself is not counted: it still loads.
        assert client.get("/accounts/login/").status_code == 200
    passed, refused = statuses.count(200), statuses.count(429)
    print(
        f"\nfigure: {attempts} login attempts from one address in {seconds:.1f} s "
        f"(rate {rate * 60:g}/min, burst {burst}): {passed} answered by the app, {refused} refused 429"
    )
    assert passed + refused == attempts, statuses
    assert within_rate(passed, rate, burst, seconds), (passed, seconds)
    assert "nginx" in answers[-1].text  # refused by nginx: no backend saw it
    # Meanwhile another address logs in.
    login(site["base"], site["ssl"], "admin", secrets["app_admin_password"])[0].close()


NEW_USER = """
from django.conf import settings
from django.contrib.auth import get_user_model
get_user_model().objects.create_user({username!r}, password={password!r})
print("limits", settings.LOGIN_FAILURES_PER_ACCOUNT, settings.LOGIN_FAILURE_WINDOW_SECONDS)
"""


def test_an_account_past_its_failed_logins_is_refused_from_every_address_while_others_log_in(
    site, hosts, client_addresses, secrets
):
    username, password = f"limits-{random.token_hex(4)}", random.token_urlsafe(16)
    script = base64.b64encode(NEW_USER.format(username=username, password=password).encode()).decode()
    made = hosts[names("http")[0]].run(f"echo {script} | base64 -d | channels-manage shell --no-imports")
    found = re.search(r"^limits (\d+) (\d+)$", made.stdout, re.M)
    assert found, made.stdout + made.stderr
    failures, window = int(found.group(1)), int(found.group(2))
    with site_client(site, client_addresses[2]) as guesser, site_client(site, client_addresses[3]) as owner:
        for _ in range(failures):
            assert login_attempt(guesser, username, "wrong").status_code == 200  # the form again
        # The right password now: refused by the app, without checking it, from any address.
        for client in (guesser, owner):
            answer = login_attempt(client, username, password)
            assert answer.status_code == 429, answer.text[:300]
            assert "Too many failed logins for this account" in answer.text
            assert 0 < int(answer.headers["Retry-After"]) <= window
    print(
        f"\nfigure: account refused after {failures} failed logins, for up to {window} s, "
        f"from a second address too (Retry-After {answer.headers['Retry-After']} s)"
    )
    # Another account logs in meanwhile.
    login(site["base"], site["ssl"], "admin", secrets["app_admin_password"])[0].close()


def nginx_with(stack, *overrides: str) -> None:
    """The lb's nginx converged with these role variables (none: the inventory's again). By its
    tag, not --limit: its upstreams name the ws hosts' endpoints, which only hosts in the run publish."""
    extra = [arg for name in overrides for arg in ("-e", name)]
    result = stack.playbook("site.yml", "--tags", "lb", *extra)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_notification_calls_past_a_tokens_rate_are_refused_429_while_the_site_serves(site, stack, limits):
    """The default is far above what this stack delivers (it bounds a runaway client, not the
    load), so the test lowers it for itself, then converges the lb back to the inventory's."""
    default_rate, default_burst = limits["channels_notify"]
    assert default_rate >= 300, "the notification API's limit must stay above the load it is built for"
    rate, burst = 2, 5
    nginx_with(stack, f"nginx_notify_rate={rate}r/s", f"nginx_notify_burst={burst}")
    try:
        calls = burst + 15
        statuses, served = [], []
        started = time.monotonic()
        for number in range(calls):
            answer = site["client"].post(
                "/api/notifications/",
                json={"user_id": site["user_id"], "message": f"limit {number}"},
                headers={"Authorization": f"Bearer {site['token']}"},
            )
            statuses.append(answer.status_code)
            # Meanwhile the site serves everyone else.
            served.append(site["client"].get("/healthz").status_code)
        seconds = time.monotonic() - started
        passed, refused = statuses.count(202), statuses.count(429)
        time.sleep(1 / rate)
        after = site["client"].post(
            "/api/notifications/",
            json={"user_id": site["user_id"], "message": "after the limit"},
            headers={"Authorization": f"Bearer {site['token']}"},
        )
    finally:
        nginx_with(stack)
    print(
        f"\nfigure: {calls} notification API calls with one token in {seconds:.1f} s (lowered to {rate}/s, burst "
        f"{burst}; default {default_rate:g}/s, burst {default_burst}): {passed} accepted, {refused} refused 429; "
        f"the site meanwhile {dict(collections.Counter(served))}; one call {1 / rate:g} s later: {after.status_code}"
    )
    assert passed + refused == calls, statuses
    assert within_rate(passed, rate, burst, seconds), (passed, seconds)
    assert set(served) == {200}
    assert after.status_code == 202
