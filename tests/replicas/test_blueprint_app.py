"""Host state of the app tier, as an SRE checks it."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.replicas.conftest import DAPHNE_BASE_PORT, GUNICORN_PORT, fact, first, names

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictSUIDSGID": "yes",
    "CapabilityBoundingSet": "",
}


def assert_hardened(unit, user: str):
    props = unit.systemd_properties
    for key, value in HARDENING.items():
        # systemctl show leaves empty values out (an empty bounding set: no capabilities at all).
        assert props.get(key, "") == value, (key, props.get(key))
    assert props["User"] == user


@pytest.mark.parametrize("name", names("http"))
def test_gunicorn_serves_on_the_private_address_hardened(converged, hosts, stack, name):
    host = hosts[name]
    unit = host.service("gunicorn")
    assert unit.is_enabled
    assert unit.is_running
    assert_hardened(unit, "gunicorn")
    assert host.socket(f"tcp://{stack.address(name)}:{GUNICORN_PORT}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{GUNICORN_PORT}").is_listening
    health = host.run("curl -sf http://%s:%s/healthz", stack.address(name), str(GUNICORN_PORT))
    assert health.stdout == '{"status": "ok"}'


@pytest.mark.parametrize("name", names("ws"))
def test_one_daphne_per_cpu_each_on_its_port(converged, hosts, stack, name):
    host = hosts[name]
    cpus = int(host.run("nproc").stdout)
    for port in range(DAPHNE_BASE_PORT, DAPHNE_BASE_PORT + cpus):
        unit = host.service(f"daphne@{port}")
        assert unit.is_enabled
        assert unit.is_running
        assert_hardened(unit, "daphne")
        assert host.socket(f"tcp://{stack.address(name)}:{port}").is_listening
        pid = unit.systemd_properties["MainPID"]
        limits = host.file(f"/proc/{pid}/limits").content_string
        nofile = re.search(r"Max open files\s+(\d+)", limits).group(1)
        print(f"\nfigure: {name} daphne@{port} open-files limit really granted: {nofile}")
        assert int(nofile) >= 10000
    assert not host.service(f"daphne@{DAPHNE_BASE_PORT + cpus}").is_running


@pytest.mark.parametrize("name", sorted({first("http"), first("ws")}))
def test_secrets_are_readable_by_root_and_the_service_group_only(converged, hosts, name):
    env = hosts[name].file("/etc/channels/app.env")
    assert env.user == "root"
    assert env.group == "channels"
    assert env.mode == 0o640
    assert "DJANGO_SECRET_KEY=" in env.content_string
    for unit in ("gunicorn", f"daphne@{DAPHNE_BASE_PORT}"):
        if hosts[name].exists("systemctl") and unit.split("@")[0] in hosts[name].run("ls /etc/systemd/system").stdout:
            environment = hosts[name].service(unit).systemd_properties.get("Environment", "")
            assert "PASSWORD" not in environment
            assert "SECRET" not in environment


def test_the_manage_command_runs_as_the_app_user(converged, hosts):
    out = hosts[first("http")].run("channels-manage showmigrations orders")
    assert out.rc == 0, out.stderr
    assert "[X] 0001_initial" in out.stdout
    ws = hosts[first("ws")]
    whoami = ws.run("channels-manage shell --no-imports -c 'import os; print(os.getuid())'")
    assert whoami.stdout.strip().splitlines()[-1] == ws.run("id -u channels").stdout.strip()


def test_nginx_is_valid_serves_tls_and_keeps_stub_status_on_loopback(converged, hosts, stack):
    lb = hosts[first("lb")]
    assert lb.service("nginx").is_running
    assert lb.service("nginx").is_enabled
    assert lb.run("nginx -t").rc == 0
    assert lb.socket(f"tcp://0.0.0.0:{fact('nginx_https_port')}").is_listening
    assert lb.socket(f"tcp://0.0.0.0:{fact('nginx_http_port')}").is_listening
    status_port = fact("nginx_status_port")
    assert lb.socket(f"tcp://127.0.0.1:{status_port}").is_listening
    assert "Active connections" in lb.run("curl -s http://127.0.0.1:%s/stub_status", str(status_port)).stdout
    key = lb.file("/etc/nginx/tls/channels.key")
    assert key.mode == 0o600
    site = lb.file("/etc/nginx/sites-enabled/channels.conf").content_string
    upstream = re.search(r"upstream channels_ws \{(.*?)\}", site, re.S).group(1)
    assert "least_conn" in upstream
    # Every instance of every ws host, each once.
    expected = {
        f"{stack.address(name)}:{port}"
        for name in names("ws")
        for port in range(DAPHNE_BASE_PORT, DAPHNE_BASE_PORT + int(hosts[name].run("nproc").stdout))
    }
    listed = re.findall(r"server (\S+:\d+)", upstream)
    assert sorted(listed) == sorted(expected)


@pytest.mark.parametrize(("group", "port"), [("http", GUNICORN_PORT), ("ws", DAPHNE_BASE_PORT)])
def test_the_apps_errors_reach_the_journal_at_their_priority(converged, hosts, stack, group, port):
    """A request with a Host the site does not answer to is logged by Django at ERROR: the line is
    in the unit's journal at priority err, as JSON (config/logging.py), where `journalctl -p` finds it."""
    name = first(group)
    host = hosts[name]
    unit = "gunicorn" if group == "http" else f"daphne@{port}"
    since = host.run("date +%s").stdout.strip()
    bad = "not-allowed.invalid"
    status = host.run(
        "curl -s -o /dev/null -w '%%{http_code}' -H %s http://%s:%s/healthz",
        f"Host: {bad}",
        stack.address(name),
        str(port),
    )
    assert status.stdout == "400", status.stdout + status.stderr
    deadline = time.monotonic() + 10
    while True:
        logged = host.run("journalctl -u %s --since @%s -p err --no-pager -o cat", unit, since).stdout
        lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
        found = [line for line in lines if bad in line["message"]]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert found, f"no error about the Host header in {unit}'s journal at priority err: {logged[-2000:]}"
    assert found[0]["level"] == "ERROR"
    assert found[0]["logger"] == "django.security.DisallowedHost"
