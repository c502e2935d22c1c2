"""The browser client in a real browser, as a user meets it: Debian's Chromium driven by Playwright,
through nginx over TLS. Log in with the form; a notification posted to the API appears as a toast;
live prices update; an order lookup answers; the daphne instance holding the page's notification
socket restarted: the page shows it reconnecting and comes back with one socket, not two, and the
next notification arrives; a user over the connection limit is told why. A screenshot of each step
is kept in .replicas-reports/browser/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.replicas.conftest import ROOT, first, instance_gauges, open_ws
from tests.replicas.test_drills import pong

CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright's own browsers are never downloaded
SHOTS = "browser"
# Sockets per user and endpoint: the app's default, read from its owner (the stack does not set it).
PER_USER = int(re.search(r'"WS_MAX_CONNECTIONS_PER_USER", (\d+)', (ROOT / "app/config/settings.py").read_text())[1])
# What the page records of its sockets' states (the [data-state-for] elements app.js updates).
RECORD_STATES = """
window.__states = {};
document.querySelectorAll("[data-state-for]").forEach(function (el) {
  var name = el.dataset.stateFor;
  window.__states[name] = [el.textContent];
  new MutationObserver(function () { window.__states[name].push(el.textContent); })
    .observe(el, {childList: true, characterData: true, subtree: true});
});
"""


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        # As root, Chromium runs only without its sandbox; the page is the stack's own site.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots():
    folder = ROOT / ".replicas-reports" / SHOTS
    folder.mkdir(parents=True, exist_ok=True)
    taken = []

    def shot(page: Page, name: str) -> None:
        path = folder / f"{len(taken) + 1:02d}-{name}.png"
        page.screenshot(path=path, full_page=True)
        taken.append(path.name)

    yield shot
    print(f"\nfigure: browser screenshots kept: {len(taken)} in .replicas-reports/{SHOTS}/")


@pytest.fixture(scope="module")
def context(browser, site, secrets):
    """A browser session logged in as the admin through the login form (the certificate is the stack's own)."""
    made = browser.new_context(ignore_https_errors=True, base_url=site["base"])
    page = made.new_page()
    page.goto("/accounts/login/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", secrets["app_admin_password"])
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_url(re.compile(r"/$"))
    page.close()
    yield made
    made.close()


def open_home(context) -> Page:
    page = context.new_page()
    page.goto("/")
    page.evaluate(RECORD_STATES)
    for name in ("live", "notifications", "orders"):
        expect(page.locator(f'[data-state-for="{name}"]')).to_have_attribute("data-state", "open", timeout=15_000)
    return page


def notify(site, message: str) -> None:
    response = site["client"].post(
        "/api/notifications/",
        json={"user_id": site["user_id"], "message": message},
        headers={"Authorization": f"Bearer {site['token']}"},
    )
    assert response.status_code == 202, response.text


def test_the_page_logs_in_and_shows_a_notification_as_a_toast(context, site, shots):
    page = open_home(context)
    try:
        expect(page.locator("#whoami")).to_have_text("admin")
        shots(page, "logged-in")
        notify(site, "hello from the browser test")
        toast = page.locator(".notification-toast", has_text="hello from the browser test")
        expect(toast).to_be_visible(timeout=15_000)
        expect(page.locator("#notification-log li").first).to_contain_text("hello from the browser test")
        shots(page, "toast")
    finally:
        page.close()


def test_live_prices_update_on_the_page(context, stack, shots):
    page = open_home(context)
    try:
        symbol = "BROWSR"
        # Every price the page writes into the table, as the page itself sees it.
        page.evaluate(
            """() => {
                 window.__prices = [];
                 new MutationObserver(function (records) {
                   records.forEach(function (record) {
                     var cell = record.target.nodeType === 1 ? record.target : record.target.parentElement;
                     var row = cell && cell.closest("tr");
                     if (row && cell === row.cells[1]) { window.__prices.push(row.id + " " + cell.textContent); }
                   });
                 }).observe(document.getElementById("prices"), {childList: true, characterData: true, subtree: true});
               }"""
        )
        published = stack.run(
            first("http"), f"channels-manage publish_ticks --rate 5 --count 20 --symbols {symbol}", timeout=120
        )
        assert published.returncode == 0, published.stderr
        row = page.locator(f"#sym-{symbol}")
        expect(row).to_be_visible(timeout=15_000)
        expect(row.locator("td").nth(1)).to_have_text(re.compile(r"^\d+\.\d\d$"))
        time.sleep(1)  # the last batch
        seen = [line.split()[1] for line in page.evaluate("window.__prices") if line.startswith(f"sym-{symbol} ")]
        print(f"\nfigure: browser: 20 ticks of {symbol} at 5/s; the page wrote its price {len(seen)} times")
        assert len(set(seen)) >= 2, seen
        shots(page, "live-prices")
    finally:
        page.close()


def test_an_order_lookup_answers_on_the_page(context, stack, shots):
    made = stack.run(
        first("http"),
        "channels-manage shell -c "
        + json.dumps(
            "from django.contrib.auth import get_user_model; from orders.models import Order;"
            " print(Order.objects.create(owner=get_user_model().objects.get(username='admin'),"
            " description='looked up in a browser').pk)"
        ),
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    order = int(made.stdout.split()[-1])
    page = open_home(context)
    try:
        page.fill("#order-form input[name=order_id]", str(order))
        page.click("#order-form button[type=submit]")
        result = page.locator("#order-result")
        expect(result).to_contain_text('"type": "order"', timeout=15_000)
        answer = json.loads(result.text_content())
        assert answer["order"]["id"] == order
        assert answer["order"]["description"] == "looked up in a browser"
        shots(page, "order-lookup")
    finally:
        page.close()


def serving(hosts, stack, want: int) -> dict[str, float]:
    """The daphne instances holding a notification socket and how many, once they hold `want` in
    all (a page closed just before gives its socket back within moments), or after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        held = {name: value for name, value in instance_gauges(hosts, stack, "notifications").items() if value}
        if sum(held.values()) == want or time.monotonic() > deadline:
            return held
        time.sleep(0.5)


def answers_ready(hosts, stack, host: str, port: str, seconds: float = 60) -> bool:
    """The instance answers /readyz with 200, read from the monitoring host as Prometheus reads it:
    `systemctl restart` returns once daphne is forked, seconds before it has loaded the app."""
    probe = "curl -s -o /dev/null -w '%%{http_code}' http://%s:%s/readyz"
    deadline = time.monotonic() + seconds
    while hosts[first("monitoring")].run(probe, stack.address(host), port).stdout.strip() != "200":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_a_restarted_instance_shows_reconnecting_then_one_socket_and_the_next_toast(context, site, hosts, stack, shots):
    page = open_home(context)
    try:
        before = serving(hosts, stack, 1)
        assert sum(before.values()) == 1, f"the page's notification socket only, found: {before}"
        (instance,) = before
        host, port = instance.split(":")
        restarted = hosts[host].run(f"systemctl restart daphne@{port}.service")
        assert restarted.rc == 0, restarted.stderr
        assert answers_ready(hosts, stack, host, port), f"daphne@{port} on {host} not ready 60 s after its restart"
        state = page.locator('[data-state-for="notifications"]')
        expect(state).to_have_attribute("data-state", "open", timeout=30_000)
        states = page.evaluate("window.__states.notifications")
        print(f"\nfigure: browser: daphne@{port} on {host} restarted; the page showed: {' -> '.join(states)}")
        # The server's going-away code, shown, then open again (4001: back after the first step's jitter).
        assert any(re.fullmatch(r"reconnecting in \d+ s \(code 4001: the server is restarting\)", s) for s in states)
        assert states[-1] == "open"
        shots(page, "reconnected")
        # One socket for the page, wherever it landed, not two.
        after = serving(hosts, stack, 1)
        assert sum(after.values()) == 1, after
        notify(site, "after the restart")
        expect(page.locator(".notification-toast", has_text="after the restart")).to_be_visible(timeout=15_000)
        shots(page, "toast-after-restart")
    finally:
        page.close()


def test_the_client_backs_off_exponentially_with_jitter(context):
    page = open_home(context)
    try:
        delays = page.evaluate(
            """() => [0, 1, 2, 3, 4, 5, 6, 10].map(a =>
                 Array.from({length: 200}, () => LiveSocket.backoffDelay(a, 500, 30000)))"""
        )
    finally:
        page.close()
    for attempt, values in zip([0, 1, 2, 3, 4, 5, 6, 10], delays, strict=True):
        ceiling = min(30_000, 500 * 2**attempt)
        assert all(ceiling / 2 <= value <= ceiling for value in values), (attempt, min(values), max(values))
        assert len(set(values)) > 10, (attempt, sorted(set(values)))  # jitter: not one delay for everyone


@contextlib.contextmanager
def event_loop_thread():
    """run(coroutine) -> its result, on an event loop in a thread of its own, kept until the end.

    Sockets held beside the browser use websockets' asyncio client, as every other replica test
    does, not its sync client: that one sends the handshake while its reading thread is already
    inside OpenSSL on the same TLS socket, and with TLS 1.3 the server's session ticket arriving
    meanwhile left the request unsent (7 handshakes hung in 1,500 through nginx here, none with
    the asyncio client or with TLS 1.2; nginx never saw a request)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="slot-holder", daemon=True)
    thread.start()
    try:
        yield lambda coroutine: asyncio.run_coroutine_threadsafe(coroutine, loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def hold_slot(site) -> ClientConnection | None:
    """One of the user's notification slots, taken from outside the browser, or None if the server
    refused it. The handshake alone proves nothing: a refused socket is accepted, then closed with
    4429, so the socket must answer a ping."""
    socket = await open_ws(site, "/ws/notifications/")
    try:
        await pong(socket)
    except ConnectionClosed as closed:
        if closed.rcvd is not None and closed.rcvd.code == 4429:
            return None
        raise
    except BaseException:
        await socket.close()
        raise
    return socket


def test_a_user_over_the_connection_limit_sees_why(context, site, hosts, stack, shots):
    # The earlier tests' pages are closed; their sockets give back gauge then slot, moments later.
    assert serving(hosts, stack, 0) == {}, "the earlier pages' notification sockets are still open"
    with event_loop_thread() as run, contextlib.ExitStack() as held:
        taken, deadline = 0, time.monotonic() + 10
        while taken < PER_USER:
            socket = run(hold_slot(site))
            if socket is None:
                assert time.monotonic() < deadline, "a slot was still taken 10 s after the user's last socket closed"
                time.sleep(0.5)
                continue
            held.callback(run, socket.close())
            taken += 1
        page = context.new_page()
        try:
            page.goto("/")
            state = page.locator('[data-state-for="notifications"]')
            expect(state).to_have_text(
                re.compile(r"code 4429: too many open connections for this account"), timeout=15_000
            )
            print(f"\nfigure: browser: with {PER_USER} sockets held, the page says: {state.text_content()}")
            shots(page, "over-the-limit")
        finally:
            page.close()
