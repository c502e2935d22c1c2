"""Each port is stated once: moved in an inventory, every file that names it follows.

A throwaway inventory (one host per group, addresses made up) overrides the
ports an operator is most likely to move, in its group_vars/all as the
production example does, and tests/render/follow.yml renders each host's
files the way site.yml wires them. Both sides of every connection must carry
the new port: the service's own config and what its peers read (nginx's
upstreams, the firewall's flows, Prometheus's targets, the app's environment).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from bench.pools import role_default
from tests.ansible_cli import ansible_playbook

ADDRESSES = {"lb1": "10.9.0.11", "http1": "10.9.0.21", "ws1": "10.9.0.31", "redis1": "10.9.0.41",
             "db1": "10.9.0.51", "mon1": "10.9.0.61"}  # fmt: skip
GROUPS = {"lb": "lb1", "http": "http1", "ws": "ws1", "redis": "redis1", "db": "db1", "monitoring": "mon1"}
MOVED = {"gunicorn_port": 9000, "daphne_base_port": 9101, "redis_port": 6400, "redis_sentinel_port": 26400,
         "postgresql_port": 5440, "nginx_http_port": 8080, "nginx_https_port": 8443}  # fmt: skip
SECRETS = ["postgresql_app_password", "redis_password", "redis_sentinel_password", "app_secret_key",
           "app_notify_api_token"]  # fmt: skip


def render(tmp_path: Path, overrides: dict, redis_shards: dict[str, int] | None = None) -> Path:
    """Each host's files; redis_shards gives more redis hosts (name: shard), each its shard's master."""
    inventory = tmp_path / "inventory"
    (inventory / "group_vars/all").mkdir(parents=True)
    hosts = {
        "all": {
            "vars": {"ansible_connection": "local", "daphne_instances": 2, "redis_current_master": ADDRESSES["redis1"]},
            "children": {
                group: {"hosts": {host: {"blueprint_private_address": ADDRESSES[host]}}}
                for group, host in GROUPS.items()
            },
        }
    }
    for number, (host, shard) in enumerate((redis_shards or {}).items()):
        address = f"10.9.0.{42 + number}"
        hosts["all"]["children"]["redis"]["hosts"][host] = {
            "blueprint_private_address": address,
            "redis_shard": shard,
            "redis_current_master": address,
        }
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    settings = {**overrides, "blueprint_server_name": "shop.example.org", **{name: f"{name}-value" for name in SECRETS}}
    (inventory / "group_vars/all/vars.yml").write_text(yaml.safe_dump(settings))
    out = tmp_path / "rendered"
    result = ansible_playbook("-i", str(inventory), "../tests/render/follow.yml", "-e", f"render_dir={out}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return out


def connections(out: Path) -> dict[str, set[str]]:
    """Each side of each connection, as the rendered files state it."""
    a = ADDRESSES
    nginx = (out / "lb1/channels.conf").read_text()
    app = (out / "http1/app.env").read_text()
    prometheus = yaml.safe_load((out / "mon1/prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    firewall = {host: (out / host / "nftables.conf").read_text() for host in ADDRESSES}

    def dports(host: str) -> set[str]:
        return {p for ports in re.findall(r"tcp dport \{ ([^}]*) \}", firewall[host]) for p in ports.split(", ")}

    sentinel = (out / "redis1/sentinel.conf").read_text()
    ws_ports = json.loads((out / "ws1/daphne_ports.json").read_text())
    return {
        "gunicorn listens": set(re.findall(r"--bind (\S+)", (out / "http1/gunicorn.service").read_text())),
        "nginx's http upstream": set(re.findall(r"server (10\.9\.0\.21:\d+)", nginx)),
        "daphne instances": {f"{a['ws1']}:{port}" for port in ws_ports},
        "nginx's ws upstream": set(re.findall(r"server (10\.9\.0\.31:\d+)", nginx)),
        "redis listens": set(re.findall(r"^port (\d+)", (out / "redis1/redis.conf").read_text(), re.M)),
        "sentinel listens": set(re.findall(r"^port (\d+)", sentinel, re.M)),
        "sentinel watches": set(re.findall(r"^sentinel monitor \S+ \S+ (\d+)", sentinel, re.M)),
        "the app's sentinels": set(re.search(r"REDIS_SENTINELS='([^']*)'", app)[1].split(",")),
        "postgresql listens": set(re.findall(r"^port = (\d+)", (out / "db1/postgresql.conf").read_text(), re.M)),
        "the app's database": {re.search(r"DATABASE_URL='[^@]*@([^/]*)/", app)[1]},
        "the redis exporter reads": set(
            re.findall(r"redis://127.0.0.1:(\d+)", (out / "redis1/prometheus-redis-exporter.env").read_text())
        ),
        "the sentinel exporter reads": set(
            re.findall(r"redis://127.0.0.1:(\d+)", (out / "redis1/prometheus-redis-exporter-sentinel.env").read_text())
        ),
        "the postgres exporter reads": set(
            re.findall(r" port=(\d+)", (out / "db1/prometheus-postgres-exporter.env").read_text())
        ),
        "nginx listens": set(re.findall(r"listen (\d+)[ ;]", nginx)),
        "nginx redirects to": set(re.findall(r"return 301 https://\$host(\S*)\$request_uri", nginx)),
        "lb firewall": dports("lb1"),
        "http firewall": dports("http1"),
        "ws firewall": dports("ws1"),
        "redis firewall": dports("redis1"),
        "db firewall": dports("db1"),
        "scraped gunicorn": {t for t in targets if t.startswith(a["http1"] + ":") and not t.endswith(":9100")},
        "scraped daphne": {t for t in targets if t.startswith(a["ws1"] + ":") and not t.endswith(":9100")},
        "server name": {"shop.example.org"} & set(re.findall(r"server_name (\S+);", nginx)),
        "the app's hosts": {"shop.example.org"} & set(re.search(r"DJANGO_ALLOWED_HOSTS='([^']*)'", app)[1].split(",")),
        "the app's trusted origins": set(re.search(r"DJANGO_CSRF_TRUSTED_ORIGINS='([^']*)'", app)[1].split(",")),
    }


def expected(ports: dict[str, int]) -> dict[str, set[str]]:
    a = ADDRESSES
    gunicorn = f"{a['http1']}:{ports['gunicorn_port']}"
    daphne = {f"{a['ws1']}:{ports['daphne_base_port'] + n}" for n in range(2)}
    redis, sentinel, db = (str(ports[name]) for name in ("redis_port", "redis_sentinel_port", "postgresql_port"))
    node, redis_exporter, sentinel_exporter, postgres_exporter, nginx_exporter, mtail = (
        str(role_default("blueprint", f"exporters_{name}_port"))
        for name in ("node", "redis", "sentinel", "postgres", "nginx", "mtail")
    )
    return {
        "gunicorn listens": {gunicorn},
        "nginx's http upstream": {gunicorn},
        "daphne instances": daphne,
        "nginx's ws upstream": daphne,
        "redis listens": {redis},
        "sentinel listens": {sentinel},
        "sentinel watches": {redis},
        "the app's sentinels": {f"{a['redis1']}:{sentinel}"},
        "postgresql listens": {db},
        "the app's database": {f"{a['db1']}:{db}"},
        "the redis exporter reads": {redis},
        "the sentinel exporter reads": {sentinel},
        "the postgres exporter reads": {db},
        "nginx listens": {str(ports["nginx_http_port"]), str(ports["nginx_https_port"])},
        "nginx redirects to": {"" if ports["nginx_https_port"] == 443 else f":{ports['nginx_https_port']}"},
        "lb firewall": {str(ports["nginx_http_port"]), str(ports["nginx_https_port"]), node, nginx_exporter, mtail},
        "http firewall": {str(ports["gunicorn_port"]), node},
        "ws firewall": {port.split(":")[1] for port in daphne} | {node},
        "redis firewall": {redis, sentinel, node, redis_exporter, sentinel_exporter},
        "db firewall": {db, node, postgres_exporter},
        "scraped gunicorn": {gunicorn},
        "scraped daphne": daphne,
        "server name": {"shop.example.org"},
        "the app's hosts": {"shop.example.org"},
        "the app's trusted origins": {
            f"https://{name}" + ("" if ports["nginx_https_port"] == 443 else f":{ports['nginx_https_port']}")
            for name in (a["lb1"], "shop.example.org")
        },
    }


@pytest.fixture(scope="module")
def moved(tmp_path_factory) -> dict[str, set[str]]:
    return connections(render(tmp_path_factory.mktemp("moved"), MOVED))


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    return render(tmp_path_factory.mktemp("shipped"), {})


@pytest.fixture(scope="module")
def as_shipped(shipped) -> dict[str, set[str]]:
    return connections(shipped)


@pytest.mark.parametrize("side", list(expected(MOVED)))
def test_moved_ports_are_followed_everywhere(moved, side):
    assert moved[side] == expected(MOVED)[side]


@pytest.mark.parametrize("side", list(expected(MOVED)))
def test_shipped_ports_are_the_blueprint_roles(as_shipped, side):
    shipped = {name: role_default("blueprint", name) for name in MOVED}
    assert as_shipped[side] == expected(shipped)[side]


def test_a_second_shard_reaches_the_sentinels_the_app_and_prometheus(tmp_path):
    """redis2 serves shard 1: every sentinel watches both masters, the app shards over both
    names in order, and Prometheus labels each redis target with its shard."""
    out = render(tmp_path, {}, redis_shards={"redis2": 1})
    for host in ("redis1", "redis2"):
        watched = re.findall(r"^sentinel monitor (\S+) (\S+) ", (out / host / "sentinel.conf").read_text(), re.M)
        assert watched == [("channels", ADDRESSES["redis1"]), ("channels-1", "10.9.0.42")]
    assert "replicaof" not in (out / "redis2/redis.conf").read_text()  # its shard's master
    for host in ("http1", "ws1"):
        assert "REDIS_SENTINEL_MASTER='channels,channels-1'" in (out / host / "app.env").read_text()
    prometheus = yaml.safe_load((out / "mon1/prometheus.yml").read_text())
    labels = {
        job["job_name"]: [config["labels"] for config in job["static_configs"]] for job in prometheus["scrape_configs"]
    }
    assert labels["redis"] == [{"host": "redis1", "shard": "0"}, {"host": "redis2", "shard": "1"}]
    assert all("shard" not in each for each in labels["sentinel"])


def test_retiring_pool_hosts_leave_the_load_balancers_and_prometheus_only(tmp_path):
    """retire.yml's hosts: out of nginx's upstreams and Prometheus's app targets, while the firewall
    still lets them finish; no pool host's settings name another pool host, so adding or removing
    one changes no other app host's environment (and restarts nothing there)."""
    out = render(tmp_path, {"blueprint_retiring": ["ws1", "http1"]})
    nginx = (out / "lb1/channels.conf").read_text()
    prometheus = yaml.safe_load((out / "mon1/prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"] or [] for job in prometheus["scrape_configs"]}
    jobs = {name: [config["labels"]["host"] for config in configs] for name, configs in jobs.items()}
    for host, peer, job in (("http1", "ws1", "gunicorn"), ("ws1", "http1", "daphne")):
        assert ADDRESSES[host] not in nginx
        assert jobs[job] == []
        assert host in jobs["node"]
        assert ADDRESSES[host] in (out / "redis1/nftables.conf").read_text()
        env = (out / host / "app.env").read_text()
        assert ADDRESSES[host] in env
        assert ADDRESSES[peer] not in env


def test_a_pool_host_answers_to_its_own_address_and_the_load_balancers_not_its_peers(shipped):
    allowed = {
        host: set(re.search(r"DJANGO_ALLOWED_HOSTS='([^']*)'", (shipped / host / "app.env").read_text())[1].split(","))
        for host in ("http1", "ws1")
    }
    assert allowed["http1"] == {ADDRESSES["lb1"], "lb1", "shop.example.org", ADDRESSES["http1"]}
    assert allowed["ws1"] == {ADDRESSES["lb1"], "lb1", "shop.example.org", ADDRESSES["ws1"]}


def idle_timeouts(out: Path) -> tuple[int, int]:
    """Seconds an idle connection between nginx and gunicorn is kept: by nginx, by gunicorn."""
    upstream = re.search(r"upstream channels_http \{[^}]*\}", (out / "lb1/channels.conf").read_text())[0]
    nginx = int(re.search(r"keepalive_timeout (\d+)s;", upstream)[1])
    return nginx, int(re.search(r"--keep-alive (\d+)", (out / "http1/gunicorn.service").read_text())[1])


def test_nginx_closes_an_idle_http_pool_connection_before_gunicorn_does(shipped, tmp_path):
    """A request nginx sends on a connection gunicorn closes at that moment gets no answer: a 502,
    and nginx does not resend a POST. nginx must always be the side that closes an idle one,
    also when an operator moves its timeout."""
    nginx, gunicorn = idle_timeouts(shipped)
    assert 0 < nginx < gunicorn
    nginx, gunicorn = idle_timeouts(render(tmp_path, {"nginx_upstream_keepalive_timeout": 300}))
    assert nginx == 300 < gunicorn
