"""One stack per test run, shared by every test that needs one, always brought down.

The stack is the container replicas, or with BLUEPRINT_STACK=vagrant the
Vagrantfile's VMs (`./stack test-vm` sets that up); the test_blueprint_* files
run on either. Files run in name order: test_blueprint_* (on the
converged stack) before test_harness.py (replicas only), whose drills reboot,
reset and finally remove the hosts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect

import vms
from bench.load import login
from bench.pools import role_default, stack_secrets
from replicas.config import from_env
from replicas.harness import Harness
from replicas.topology import chosen, load
from tests.ansible_cli import ansible
from tests.stacks import ReplicaStack, VagrantStack

__all__ = ["ansible"]  # the replica tests import it from here

# The topology under test: scaled by default, CHANNELS_TOPOLOGY=all-in-one for
# the single-host stack (see the README). Tests read hosts and groups from it.
TOPOLOGY_NAME = chosen()
TOPOLOGY = load(TOPOLOGY_NAME)
STACK_KIND = os.environ.get("BLUEPRINT_STACK", "replicas")


def names(group: str) -> list[str]:
    """Host names of a group of the topology under test, in order."""
    return [h.name for h in TOPOLOGY.group(group)]


def first(group: str) -> str:
    return names(group)[0]


def unique(*groups: str) -> list[str]:
    """Hosts of any of these groups, each once (all-in-one: one host is every group)."""
    return list(dict.fromkeys(name for group in groups for name in names(group)))


def fact(name: str):
    """A port or name of the stack, from its owner (the blueprint role's defaults)."""
    return role_default("blueprint", name)


GUNICORN_PORT, DAPHNE_BASE_PORT = fact("gunicorn_port"), fact("daphne_base_port")
REDIS_PORT, SENTINEL_PORT, MASTER = fact("redis_port"), fact("redis_sentinel_port"), fact("redis_sentinel_master_name")


def redis_cli(host, password: str, *args: str, port: int = REDIS_PORT):
    return host.run(
        "REDISCLI_AUTH=%s redis-cli -p %s --no-auth-warning " + " ".join(["%s"] * len(args)), password, str(port), *args
    )


def master_address(hosts, secrets, name: str, master: str = MASTER) -> str:
    """The address of `master` (the first shard's by default) as the sentinel on host `name` names it."""
    out = redis_cli(
        hosts[name],
        secrets["redis_sentinel_password"],
        "SENTINEL",
        "get-master-addr-by-name",
        master,
        port=SENTINEL_PORT,
    )
    assert out.rc == 0, out.stderr
    return out.stdout.split()[0]


def sentinel_failover(hosts, secrets) -> tuple[str, str]:
    """SENTINEL FAILOVER, then wait until every sentinel names the new master: (old, new) addresses."""
    redis_hosts = names("redis")
    before = master_address(hosts, secrets, redis_hosts[0])
    out = redis_cli(
        hosts[redis_hosts[0]], secrets["redis_sentinel_password"], "SENTINEL", "FAILOVER", MASTER, port=SENTINEL_PORT
    )
    assert out.stdout.strip() == "OK", out.stdout + out.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = {master_address(hosts, secrets, name) for name in redis_hosts}
        if len(seen) == 1 and before not in seen:
            return before, seen.pop()
        time.sleep(1)
    raise AssertionError(f"the failover did not happen: sentinels still name {seen}")


def pytest_collection_modifyitems(items):
    # Tests marked `last` tear shared state down; everything else runs first.
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries what the stack logged meanwhile: each host's journal at
    warning and above since the test started, and the lb's nginx error and access logs (it writes
    no journal; the access log says what each request got: a 499 is a client that gave up waiting).
    The stack is gone when a CI report is read; this is what is left of it."""
    outcome = yield
    report = outcome.get_result()
    stack = item.funcargs.get("stack")
    if report.when != "call" or not report.failed or stack is None:
        return
    since = int(call.start) - 1
    for host in stack.topology.hosts:
        command = f"journalctl --since @{since} -p warning --no-pager -o short-iso -n 40"
        if host.name in names("lb"):
            for log in ("error.log", "access.log"):
                command += f"; find /var/log/nginx/{log} -newermt @{since} -exec tail -n 20 {{}} +"
        out = stack.run(host.name, command, timeout=20)
        logged = (out.stdout + out.stderr).strip()
        if logged and logged != "-- No entries --":
            report.sections.append((f"logged on {host.name} during the test", logged))


@pytest.fixture(scope="session")
def stack():
    """The topology under test, up for the whole session; down at the end even on failure."""
    if STACK_KIND == "vagrant":
        under_test = VagrantStack(TOPOLOGY, vms.STATE_DIR)
    else:
        under_test = ReplicaStack(Harness(from_env()), TOPOLOGY)
    try:
        started = time.monotonic()
        under_test.up()
        print(f"\nfigure: {TOPOLOGY_NAME} {STACK_KIND} up: {time.monotonic() - started:.0f} s")
        yield under_test
    finally:
        under_test.down()


@pytest.fixture(scope="session")
def harness(stack):
    """The replica harness behind the stack (test_harness.py's drills drive it directly)."""
    return stack.harness


@pytest.fixture
def on(stack):
    """on(host, command) -> CompletedProcess, run as root over SSH."""

    def run(host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return stack.run(host, command, timeout=timeout)

    return run


ROOT = Path(__file__).resolve().parents[2]


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP as {host: {"ok": n, "changed": n, "failed": n, ...}}."""
    hosts = {}
    for line in output.split("PLAY RECAP")[-1].splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line)
        if match:
            hosts[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return hosts


@pytest.fixture(scope="session")
def converged(stack):
    """site.yml applied once to the fresh stack; the run's time is printed, not asserted."""
    started = time.monotonic()
    result = stack.converge()
    seconds = time.monotonic() - started
    print(f"\nfigure: first converge of site.yml ({TOPOLOGY_NAME} {STACK_KIND}): {seconds:.0f} s")
    summary = recap(result.stdout)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert set(summary) == {h.name for h in stack.topology.hosts}
    return {"seconds": seconds, "recap": summary}


@pytest.fixture(scope="session")
def hosts(stack):
    """testinfra hosts, root over SSH."""
    return {h.name: stack.testinfra(h.name) for h in stack.topology.hosts}


@pytest.fixture(scope="session")
def secrets(converged):
    """The generated secrets: site.yml's first run writes them, so they are read after it."""
    return stack_secrets()


@pytest.fixture(scope="module")
def site(converged, stack, hosts, secrets, tmp_path_factory):
    """The lb's URL, a TLS context trusting its certificate, and a logged-in admin session."""
    lb = stack.address(first("lb"))
    cafile = tmp_path_factory.mktemp("tls") / "lb.crt"
    cafile.write_text(hosts[first("lb")].file("/etc/nginx/tls/channels.crt").content_string)
    context = ssl.create_default_context(cafile=str(cafile))
    base = f"https://{lb}"
    try:
        client, user_id = login(base, context, "admin", secrets["app_admin_password"])
    except Exception as exc:
        # What nginx said about it, in the report (the stack is gone when it is read).
        log = hosts[first("lb")].run("tail -n 20 /var/log/nginx/error.log").stdout
        raise RuntimeError(f"the admin's login failed; nginx's error log ends with:\n{log}") from exc
    yield {
        "base": base,
        "ws": f"wss://{lb}",
        "ssl": context,
        "client": client,
        "user_id": user_id,
        "session": client.cookies["sessionid"],
        "token": secrets["app_notify_api_token"],
    }
    client.close()


def open_ws(site, path: str, *, session: bool = True, origin: str | None = None, source: str | None = None):
    """A WebSocket through nginx; `source`: the client's address (a load client's, see `client_addresses`)."""
    headers = {"Cookie": f"sessionid={site['session']}"} if session else {}
    return ws_connect(
        f"{site['ws']}{path}",
        ssl=site["ssl"],
        origin=origin or site["base"],
        additional_headers=headers,
        open_timeout=10,
        **({"local_addr": (source, 0)} if source else {}),
    )


@contextlib.contextmanager
def source_addresses(stack, count: int):
    """Source addresses for a load client: nginx limits connections per address (and must).

    On the replicas, `count` addresses added to the harness's own bridge meanwhile;
    elsewhere the controller's one address (None: the system picks it).
    """
    if STACK_KIND != "replicas":
        yield [None]
        return
    with stack.harness.client_addresses(count) as addresses:
        yield addresses


@pytest.fixture
def client_addresses(stack):
    """Four load client addresses for the test (`source_addresses`)."""
    with source_addresses(stack, 4) as addresses:
        yield addresses


def changed_app(destination: Path, marker: str) -> Path:
    """A copy of app/ whose home page carries `marker`: a release deploy.yml must roll out."""
    source = destination / "app"
    shutil.copytree(ROOT / "app", source, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "staticfiles"))
    page = source / "realtime" / "templates" / "realtime" / "home.html"
    # Inside the content block: a child template renders nothing outside its blocks.
    page.write_text(page.read_text().replace('<section id="live">', marker + '\n<section id="live">', 1))
    assert marker in page.read_text()
    return source


def instance_gauges(hosts, stack, consumer: str) -> dict[str, float]:
    """websocket_connections{consumer=...} of every daphne instance, scraped from the monitoring host."""
    values = {}
    for h in stack.topology.group("ws"):
        address = stack.address(h.name)
        ports = hosts[h.name].run("systemctl list-units --plain --no-legend 'daphne@*.service'").stdout
        for port in re.findall(r"daphne@(\d+)\.service", ports):
            scrape = hosts[first("monitoring")].run("curl -sf http://%s:%s/metrics", address, port)
            assert scrape.rc == 0, scrape.stderr
            match = re.search(rf'^websocket_connections\{{consumer="{consumer}"\}} (\S+)$', scrape.stdout, re.M)
            values[f"{h.name}:{port}"] = float(match.group(1)) if match else 0.0
    return values
