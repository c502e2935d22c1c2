"""The config templates, rendered by Ansible, pass their own tools' checks.

nginx -t (Debian's nginx binary, unpacked into the harness's cache, never
installed or started here), systemd-analyze verify and its offline security
score on the units, nft --check on the firewall ruleset. Each check is also
shown to fail on a broken file, so none of them can pass vacuously.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.debtools import unpacked
from tests.hardening import BOUNDS, DROP_INS

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300, **kwargs)


@pytest.fixture(scope="session")
def nginx_tree() -> Path:
    return unpacked("nginx", "nginx-common")


def nginx_prefix(rendered: Path, nginx_tree: Path, prefix: Path, mutate=lambda text: text) -> Path:
    """The rendered nginx config laid out under prefix, its absolute paths moved there."""
    etc = prefix / "etc/nginx"
    for folder in ("conf.d", "sites-enabled", "modules-enabled", "tls"):
        (etc / folder).mkdir(parents=True, exist_ok=True)
    for folder in ("log", "static", "lib"):
        (prefix / folder).mkdir(exist_ok=True)
    shutil.copy(nginx_tree / "etc/nginx/mime.types", etc)

    def moved(text: str) -> str:
        for old, new in (
            ("/etc/nginx", str(etc)),
            ("/var/log/nginx", str(prefix / "log")),
            ("/run/nginx.pid", str(prefix / "nginx.pid")),
            ("/var/www/channels/static", str(prefix / "static")),
        ):
            text = text.replace(old, new)
        return mutate(text)

    (etc / "nginx.conf").write_text(moved((rendered / "nginx.conf").read_text()))
    (etc / "sites-enabled/channels.conf").write_text(moved((rendered / "channels.conf").read_text()))
    # Debian's binary keeps its temporary files under /var/lib/nginx: keep them here.
    temp_paths = "".join(
        f"{kind}_temp_path {prefix / 'lib' / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (etc / "conf.d/temp-paths.conf").write_text(temp_paths)
    made = run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=channels.example.org", "-days", "1",
         "-keyout", str(etc / "tls/channels.key"), "-out", str(etc / "tls/channels.crt")]
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return etc / "nginx.conf"


def nginx_t(nginx_tree: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    return run([str(nginx_tree / "usr/sbin/nginx"), "-t", "-q", "-e", "stderr", "-c", str(conf)])


def test_nginx_accepts_the_rendered_configuration(rendered, nginx_tree, tmp_path):
    result = nginx_t(nginx_tree, nginx_prefix(rendered, nginx_tree, tmp_path))
    assert result.returncode == 0, result.stderr


def test_nginx_check_catches_a_broken_configuration(rendered, nginx_tree, tmp_path):
    conf = nginx_prefix(rendered, nginx_tree, tmp_path, mutate=lambda text: text.replace("least_conn;", "least_conns;"))
    assert "least_conns" in (conf.parent / "sites-enabled/channels.conf").read_text()
    result = nginx_t(nginx_tree, conf)
    assert result.returncode != 0
    assert "least_conns" in result.stderr


def test_the_rendered_site_routes_as_designed(rendered):
    site = (rendered / "channels.conf").read_text()
    assert "map $http_upgrade $connection_upgrade" in site
    ws_pool = site.split("upstream channels_ws", 1)[1].split("}", 1)[0]
    assert "least_conn;" in ws_pool
    # Shared by nginx's workers: least_conn over every worker's sockets, failures learned once.
    assert "zone channels_ws " in ws_pool
    assert ws_pool.count("server 10.77.0.3") == 4
    # Never taken out: nginx would put an instance back only when a WebSocket through it ends.
    assert ws_pool.count("max_fails=0;") == 4
    http_pool = site.split("upstream channels_http", 1)[1].split("}", 1)[0]
    assert "max_fails=3 fail_timeout=10s" in http_pool
    assert "zone channels_http " in http_pool
    # A lost host costs a request or a new socket this long, in either pool (nginx's default: 60 s).
    for location in ("location /ws/", "location / "):
        assert "proxy_connect_timeout 2s;" in site.split(location, 1)[1].split("}", 1)[0], location


def test_slow_clients_and_large_bodies_are_bounded_at_the_site(rendered):
    site = (rendered / "channels.conf").read_text()
    server = site.split("listen 443 ssl", 1)[1]
    for line in ("client_max_body_size 1m;", "client_header_timeout 10s;", "client_body_timeout 10s;"):
        assert line in server, line


def test_handshakes_logins_and_api_calls_are_limited_with_429(rendered):
    site = (rendered / "channels.conf").read_text()
    server = site.split("listen 443 ssl", 1)[1]
    assert "limit_req_status 429;" in server
    assert "limit_conn_status 429;" in server
    assert "zone=channels_ws_handshakes:10m rate=10r/s;" in site
    # A burst the size of an address's connections: every socket may come back at once.
    ws = server.split("location /ws/", 1)[1].split("}", 1)[0]
    assert "limit_req zone=channels_ws_handshakes burst=200 nodelay;" in ws
    # Logins: only POSTs to a login form have a key (the others are not counted).
    assert '"~^POST /(accounts|admin)/login/$" $binary_remote_addr;' in site
    assert "limit_req_zone $channels_login_client zone=channels_logins:10m rate=10r/m;" in site
    http = server.split("location / {", 1)[1].split("}", 1)[0]
    assert "limit_req zone=channels_logins burst=10 nodelay;" in http
    # The notification API: per bearer token, only on its POSTs.
    assert '"~^POST /api/notifications/ (.+)$" $1;' in site
    assert "limit_req_zone $channels_notify_token zone=channels_notify:10m rate=1000r/s;" in site
    assert "limit_req zone=channels_notify burst=1000 nodelay;" in http


def test_tls_follows_mozillas_intermediate_profile_and_hsts_waits_for_a_real_certificate(rendered):
    http = (rendered / "nginx.conf").read_text()
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in http
    assert "ssl_session_tickets off;" in http
    suites = http.split("ssl_ciphers ", 1)[1].split(";", 1)[0].split(":")
    assert suites
    assert all(s.startswith("ECDHE-") and ("GCM" in s or "CHACHA20" in s) for s in suites)
    site = (rendered / "channels.conf").read_text()
    # The sample wiring has no operator certificate: a self-signed one, no HSTS, no stapling.
    assert "Strict-Transport-Security" not in site
    assert "ssl_stapling" not in site


@pytest.fixture
def systemd_root(rendered, tmp_path) -> Path:
    """A root holding the rendered units, the distribution's units and stand-ins for the commands they run."""
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    units_rendered = ("gunicorn.service", "daphne@.service", "daphne-uvicorn@.service")
    for unit in (*units_rendered, "postgresql-backup.service", "postgresql-backup.timer"):
        shutil.copy(rendered / unit, units)
    # The backup unit's hardening is the drop-in its role installs.
    (units / "postgresql-backup.service.d").mkdir()
    shutil.copy(rendered / "postgresql-backup.service.d.conf", units / "postgresql-backup.service.d/hardening.conf")
    shutil.copytree("/usr/lib/systemd/system", tmp_path / "usr/lib/systemd/system", symlinks=True)
    for unit in (u for u in units.iterdir() if u.is_file()):
        for line in unit.read_text().splitlines():
            if line.startswith(
                ("ExecStart=", "ExecReload=", "ExecStartPre=", "ExecStartPost=", "ExecStop=", "ExecStopPost=")
            ):
                command = tmp_path / line.split("=", 1)[1].lstrip("-+!@:").split()[0].lstrip("/")
                command.parent.mkdir(parents=True, exist_ok=True)
                command.write_text("#!/bin/sh\n")
                command.chmod(0o755)
    return tmp_path


UNITS = ["gunicorn.service", "daphne@8001.service", "daphne-uvicorn@8001.service", "postgresql-backup.service"]


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *UNITS])


def test_systemd_analyze_verifies_the_rendered_units(systemd_root):
    result = verify(systemd_root)
    # Unknown keys are only warnings to systemd: any output at all fails here.
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_websocket_unit_runs_the_pools_server_and_returns_from_start_once_it_listens(rendered):
    """daphne by default, uvicorn on request (its sans-I/O websockets, no compression, X-Forwarded-* from the
    load balancers only); either way `systemctl start` waits until the instance accepts connections."""
    daphne = (rendered / "daphne@.service").read_text()
    uvicorn = (rendered / "daphne-uvicorn@.service").read_text()
    assert "/.venv/bin/daphne " in daphne
    assert "uvicorn" not in daphne
    assert "/.venv/bin/uvicorn " in uvicorn
    assert "bin/daphne" not in uvicorn
    flags = " ".join(uvicorn.replace("\\\n", " ").split())
    for flag in (
        "--ws websockets-sansio",
        "--ws-per-message-deflate false",
        "--proxy-headers --forwarded-allow-ips 10.77.0.11 ",
        "--lifespan off",
        "--ws-ping-interval 20",
    ):
        assert flag in flags, flag
    for unit in (daphne, uvicorn):
        assert "ExecStartPost=/bin/bash -c 'until (: <>/dev/tcp/10.77.0.21/%i)" in unit


def test_systemd_verify_catches_a_misspelt_hardening_option(systemd_root):
    unit = systemd_root / "etc/systemd/system/gunicorn.service"
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    assert "Unknown key" in verify(systemd_root).stderr


@pytest.mark.parametrize("unit", UNITS)
def test_units_are_hardened(systemd_root, unit):
    # systemd's own exposure score (0 = locked down, 10 = unprotected): 2.0 or better.
    result = run(["systemd-analyze", "security", "--offline=true", f"--root={systemd_root}", "--threshold=20", unit])
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Overall exposure level" in result.stdout


@pytest.fixture(scope="session")
def debian_units() -> Path:
    packages = sorted({BOUNDS[unit][0] for unit in DROP_INS if BOUNDS[unit][0]})
    return unpacked(*packages) / "lib/systemd/system"


def hardened_root(rendered: Path, debian_units: Path, root: Path) -> Path:
    """Debian's units as shipped and the blueprint's own, each with the drop-in its role installs."""
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    shutil.copytree(debian_units, root / "lib/systemd/system", symlinks=True)
    shutil.copy(rendered / "prometheus-redis-exporter-sentinel.service", units)
    for drop_in in rendered.glob("*.d.conf"):
        folder = units / drop_in.name.removesuffix(".conf")
        folder.mkdir()
        shutil.copy(drop_in, folder / "hardening.conf")
    return root


def exposure(root: Path, unit: str) -> float:
    result = run(["systemd-analyze", "security", "--offline=true", f"--root={root}", unit])
    return float(re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)[1])


@pytest.mark.parametrize("unit", DROP_INS)
def test_every_hardened_unit_scores_within_its_bound(rendered, debian_units, tmp_path, unit):
    root = hardened_root(rendered, debian_units, tmp_path)
    score = exposure(root, unit)
    print(f"\nfigure: {unit} exposure offline (Debian's unit and the drop-in): {score}")
    assert score <= BOUNDS[unit][2]
    assert run(["systemd-analyze", "verify", "--man=no", f"--root={root}", unit]).stderr.count("Unknown key") == 0


def test_the_drop_ins_are_what_lowers_the_scores(rendered, debian_units, tmp_path):
    bare = tmp_path / "bare"
    (bare / "etc/systemd/system").mkdir(parents=True)
    shutil.copytree(debian_units, bare / "lib/systemd/system", symlinks=True)
    assert exposure(bare, "nginx.service") > BOUNDS["nginx.service"][2]
    assert exposure(bare, "prometheus-node-exporter.service") > BOUNDS["prometheus-node-exporter.service"][2]


def test_nft_accepts_the_rendered_ruleset(rendered):
    result = run(["nft", "--check", "--file", str(rendered / "nftables.conf")])
    assert result.returncode == 0, result.stderr


def test_the_ruleset_denies_by_default_and_opens_only_what_it_lists(rendered):
    rules = (rendered / "nftables.conf").read_text()
    assert "type filter hook input priority filter; policy drop;" in rules
    assert "tcp dport 22 ip saddr { 10.77.0.1, 192.0.2.0/24 } accept" in rules
    assert "tcp dport { 8001-8002 } ip saddr { 10.77.0.11, 10.77.0.61 } accept" in rules
    # A flow without any source host opens nothing (nft rejects an empty set).
    assert "5432" not in rules


def test_nft_check_catches_a_broken_ruleset(rendered, tmp_path):
    broken = tmp_path / "nftables.conf"
    broken.write_text((rendered / "nftables.conf").read_text().replace("policy drop;", "policy dorp;"))
    assert run(["nft", "--check", "--file", str(broken)]).returncode != 0
