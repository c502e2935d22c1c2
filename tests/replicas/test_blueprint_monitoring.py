"""Monitoring on the live stack: every expected target up, the WebSocket gauge following real
sockets, and a stopped daphne instance raising its alert at Alertmanager, then resolving."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import quote

import pytest
import yaml

from tests.replicas.conftest import DAPHNE_BASE_PORT, GUNICORN_PORT, ROOT, fact, first, names, open_ws

# Seconds between scrapes on the drilled stacks.
SCRAPE_INTERVAL = int(
    yaml.safe_load((ROOT / "ansible/vars/local_stacks.yml").read_text())["prometheus_scrape_interval"].removesuffix("s")
)


def expected_targets(hosts) -> set[tuple[str, str, int]]:
    """(job, host, port) for every target, from the topology's groups alone."""
    jobs = {
        ("prometheus", "monitoring", "prometheus_port"), ("alertmanager", "monitoring", "alertmanager_port"),
        ("nginx", "lb", "exporters_nginx_port"), ("mtail", "lb", "exporters_mtail_port"),
        ("redis", "redis", "exporters_redis_port"), ("sentinel", "redis", "exporters_sentinel_port"),
        ("postgres", "db", "exporters_postgres_port"), ("gunicorn", "http", "gunicorn_port"),
    }  # fmt: skip
    expected = {(job, host, fact(port)) for job, group, port in jobs for host in names(group)}
    expected |= {("node", host, fact("exporters_node_port")) for host in hosts}
    for host in names("ws"):
        cpus = int(hosts[host].run("nproc").stdout)
        expected |= {("daphne", host, port) for port in range(DAPHNE_BASE_PORT, DAPHNE_BASE_PORT + cpus)}
    return expected


@pytest.fixture(scope="module")
def prom(converged, hosts, stack):
    """query(path) -> JSON of Prometheus's or Alertmanager's HTTP API, asked on the monitoring host."""
    mon = hosts[first("monitoring")]
    address = stack.address(first("monitoring"))

    def query(path: str, port: int = fact("prometheus_port")) -> dict:
        out = mon.run("curl -sfg %s", f"http://{address}:{port}{path}")
        assert out.rc == 0, out.stderr
        return json.loads(out.stdout)

    return query


def wait_for(check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def test_monitoring_services_run_where_intended(converged, hosts, stack):
    mon = hosts[first("monitoring")]
    address = stack.address(first("monitoring"))
    for unit, port in (
        ("prometheus", fact("prometheus_port")),
        ("prometheus-alertmanager", fact("alertmanager_port")),
        ("prometheus-node-exporter", fact("exporters_node_port")),
    ):
        assert mon.service(unit).is_enabled, unit
        assert mon.service(unit).is_running, unit
        assert mon.socket(f"tcp://{address}:{port}").is_listening, unit
        assert not mon.socket(f"tcp://0.0.0.0:{port}").is_listening, unit
    assert mon.file("/etc/default/prometheus").contains("--storage.tsdb.retention.time=2d")
    for name in names("redis"):
        env = hosts[name].file("/etc/default/prometheus-redis-exporter")
        assert (env.user, env.group, env.mode) == ("root", "prometheus", 0o640)


EXPORTERS = {
    "prometheus-node-exporter": ("all", fact("exporters_node_port")),
    "prometheus-nginx-exporter": ("lb", fact("exporters_nginx_port")),
    "mtail": ("lb", fact("exporters_mtail_port")),
    "prometheus-redis-exporter": ("redis", fact("exporters_redis_port")),
    "prometheus-redis-exporter-sentinel": ("redis", fact("exporters_sentinel_port")),
    "prometheus-postgres-exporter": ("db", fact("exporters_postgres_port")),
}


@pytest.mark.parametrize("unit", sorted(EXPORTERS))
def test_exporters_run_on_their_hosts_listening_on_the_private_address_only(converged, hosts, stack, unit):
    group, port = EXPORTERS[unit]
    members = list(hosts) if group == "all" else names(group)
    for name in members:
        host = hosts[name]
        address = stack.address(name)
        assert host.service(unit).is_enabled, (name, unit)
        assert host.service(unit).is_running, (name, unit)
        listening = host.socket.get_listening_sockets()
        assert f"tcp://{address}:{port}" in listening, (name, unit)
        assert not any(s.endswith(f":{port}") and address not in s for s in listening), (name, unit, listening)


def test_prometheus_has_exactly_the_expected_targets_all_up(prom, hosts):
    def targets():
        active = prom("/api/v1/targets")["data"]["activeTargets"]
        return {
            (t["labels"]["job"], t["labels"]["host"], int(t["scrapeUrl"].split(":")[2].split("/")[0])): t
            for t in active
        }

    expected = expected_targets(hosts)
    seen = wait_for(lambda: (lambda t: t if all(v["health"] == "up" for v in t.values()) else None)(targets()), 60)
    seen = seen or targets()
    assert set(seen) == expected
    down = {key: t["lastError"] for key, t in seen.items() if t["health"] != "up"}
    assert not down, down


def test_prometheus_never_stored_a_series_of_a_target_it_was_not_given(prom, hosts):
    """Every `up` series since the first start is one of the blueprint's targets: none from the
    package's example config, which scraped localhost without a host label until ours was in
    place, and whose stale `up` fired HostDown for "localhost:9100" after the restart."""
    stored = prom("/api/v1/series?match[]=up&start=0")["data"]
    foreign = [s for s in stored if "host" not in s]
    assert not foreign, foreign
    seen = {(s["job"], s["host"], int(s["instance"].rsplit(":", 1)[1])) for s in stored}
    assert seen <= expected_targets(hosts), seen - expected_targets(hosts)


async def test_the_websocket_gauge_follows_real_sockets(prom, site):
    def total() -> float:
        result = prom("/api/v1/query?query=sum(websocket_connections)")["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0

    baseline = await asyncio.to_thread(total)
    count = 12
    sockets = [await open_ws(site, "/ws/live/", session=False) for _ in range(count)]
    try:
        reached = await asyncio.to_thread(wait_for, lambda: total() == baseline + count, 2 * SCRAPE_INTERVAL + 2)
        assert reached, f"sum(websocket_connections) = {total()}, expected {baseline + count}"
    finally:
        for ws in sockets:
            await ws.close()
    back = await asyncio.to_thread(wait_for, lambda: total() == baseline, 2 * SCRAPE_INTERVAL + 2)
    assert back, f"sum(websocket_connections) = {total()} after closing, expected {baseline}"


def test_a_stopped_daphne_instance_alerts_and_resolves(prom, hosts, stack):
    ws = first("ws")
    instance = f"{stack.address(ws)}:8002"

    def at_alertmanager():
        alerts = prom("/api/v2/alerts?filter=alertname%3D%22DaphneInstanceDown%22", port=fact("alertmanager_port"))
        return [a for a in alerts if a["labels"].get("instance") == instance and a["status"]["state"] == "active"]

    assert not at_alertmanager()
    hosts[ws].run("systemctl stop daphne@8002")
    try:
        fired = wait_for(at_alertmanager, 90, every=2)
        assert fired, "DaphneInstanceDown never reached Alertmanager"
        assert fired[0]["labels"]["severity"] == "critical"
        assert fired[0]["labels"]["host"] == ws
    finally:
        hosts[ws].run("systemctl start daphne@8002")

    def resolved():
        rules = prom("/api/v1/alerts")["data"]["alerts"]
        return not any(a["labels"].get("instance") == instance for a in rules) and not at_alertmanager()

    assert wait_for(resolved, 90, every=2), "DaphneInstanceDown did not resolve after the restart"


def dashboards() -> dict[str, dict]:
    folder = ROOT / "grafana" / "dashboards"
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def test_grafana_provisioning_and_dashboards_are_laid_down(converged, hosts, secrets):
    mon = hosts[first("monitoring")]
    # The replicas cannot reach Grafana's repository (grafana_install: false): no server...
    assert not mon.package("grafana").is_installed
    # ...but everything it would load is in place, owned by it and unreadable by others.
    for path in (
        "/etc/default/grafana-server",
        "/etc/grafana/provisioning/datasources/channels.yml",
        "/etc/grafana/provisioning/dashboards/channels.yml",
    ):
        f = mon.file(path)
        assert (f.user, f.group, f.mode) == ("root", "grafana", 0o640), path
    env = mon.file("/etc/default/grafana-server").content_string
    assert f"GF_SECURITY_ADMIN_PASSWORD={secrets['grafana_admin_password']}\n" in env
    assert "GF_AUTH_ANONYMOUS_ENABLED=false\n" in env
    datasource = yaml.safe_load(mon.file("/etc/grafana/provisioning/datasources/channels.yml").content_string)
    prometheus = datasource["datasources"][0]
    assert (prometheus["uid"], prometheus["type"]) == ("prometheus", "prometheus")
    # The datasource URL answers, from the monitoring host, with Prometheus's API.
    assert mon.run("curl -sf %s/-/ready", prometheus["url"]).rc == 0
    provider = yaml.safe_load(mon.file("/etc/grafana/provisioning/dashboards/channels.yml").content_string)
    folder = provider["providers"][0]["options"]["path"]
    for name, board in dashboards().items():
        assert json.loads(mon.file(f"{folder}/{name}").content_string) == board, name


async def test_every_dashboard_panel_shows_live_data(prom, site):
    # A short burst of real traffic: pages, sockets (one refused by the limit),
    # notifications through the channel layer, client frames.
    client = site["client"]
    for _ in range(20):
        await asyncio.to_thread(client.get, "/")
    held = [await open_ws(site, "/ws/notifications/") for _ in range(3)]
    try:
        refused = await open_ws(site, "/ws/notifications/")
        await asyncio.wait_for(refused.wait_closed(), 10)
        for i in range(5):
            await asyncio.to_thread(
                client.post,
                "/api/notifications/",
                json={"user_id": site["user_id"], "message": f"burst {i}"},
                headers={"Authorization": f"Bearer {site['token']}"},
            )
        for ws in held:
            # Client frames too: the app's keep-alive ping, answered after the notifications.
            await ws.send(json.dumps({"type": "ping"}))
            frames = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(6)]
            assert [f["type"] for f in frames].count("notification") == 5
            assert {"type": "pong"} in frames
        await asyncio.sleep(3 * SCRAPE_INTERVAL)

        empty = []
        for name, board in dashboards().items():
            for panel in board["panels"]:
                for target in panel["targets"]:
                    expr = target["expr"].replace("$__rate_interval", "1m")
                    result = await asyncio.to_thread(prom, "/api/v1/query?query=" + quote(expr))
                    if not result["data"]["result"]:
                        empty.append(f"{name} / {panel['title']}: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
    finally:
        for ws in held:
            await ws.close()


def test_backends_failing_behind_nginx_are_counted(prom, hosts, site, stack):
    """With every gunicorn stopped, nginx answers 502: mtail counts upstream failures for the http pool."""

    def failures() -> float:
        result = prom("/api/v1/query?query=" + quote('sum(nginx_upstream_failures_total{pool="http"})'))["data"][
            "result"
        ]
        return float(result[0]["value"][1]) if result else 0.0

    before = failures()
    try:
        for name in names("http"):
            hosts[name].run("systemctl stop gunicorn")
        statuses = [site["client"].get("/healthz").status_code for _ in range(5)]
        assert set(statuses) == {502}, statuses
    finally:
        for name in names("http"):
            hosts[name].run("systemctl start gunicorn")
        # Every gunicorn answers on its own address before nginx is asked again.
        port = GUNICORN_PORT
        for name in names("http"):
            probe = f"curl -sf -o /dev/null http://{stack.address(name)}:{port}/healthz"
            assert wait_for(lambda probe=probe, name=name: hosts[name].run(probe).rc == 0, 60), f"{name}: gunicorn down"
    assert wait_for(lambda: failures() >= before + 5, 3 * SCRAPE_INTERVAL), f"failures: {failures()}, before {before}"
    # nginx takes the backends back once they answer again: every request of a round over the pool,
    # each on a new connection (whichever nginx worker takes it), as the next module's first one is.
    # A worker of its own once kept answering 502 for fail_timeout while another served: the
    # upstreams' shared zone makes what one worker learns hold for all.
    rounds = 2 * len(names("http"))
    fresh = {"Connection": "close"}
    assert wait_for(
        lambda: all(site["client"].get("/healthz", headers=fresh).status_code == 200 for _ in range(rounds)),
        60,
        every=2,
    )
