"""The data tiers as an SRE checks them: PostgreSQL on db, Redis + Sentinel on redis."""

from __future__ import annotations

import time

import pytest

from tests.replicas.conftest import ansible_playbook, recap

REDIS_HOSTS = ["redis1", "redis2", "redis3"]


def redis_cli(host, password: str, *args: str, port: int = 6379):
    return host.run(
        "REDISCLI_AUTH=%s redis-cli -p %s --no-auth-warning " + " ".join(["%s"] * len(args)), password, str(port), *args
    )


def master_address(hosts, secrets, name: str) -> str:
    out = redis_cli(
        hosts[name], secrets["redis_sentinel_password"], "SENTINEL", "get-master-addr-by-name", "channels", port=26379
    )
    assert out.rc == 0, out.stderr
    return out.stdout.split()[0]


def test_postgresql_listens_on_the_private_address_and_loopback_only(converged, hosts, stack):
    db = hosts["db1"]
    assert db.package("postgresql-15").is_installed
    service = db.service("postgresql@15-main")
    assert service.is_enabled
    assert service.is_running
    private = str(stack["topology"].host("db1").address(stack["harness"].cfg.subnet))
    assert db.socket(f"tcp://{private}:5432").is_listening
    assert db.socket("tcp://127.0.0.1:5432").is_listening
    assert not db.socket("tcp://0.0.0.0:5432").is_listening


def test_postgresql_admits_the_app_role_by_password_and_only_from_the_app_hosts(converged, hosts, stack, secrets):
    db = hosts["db1"]
    hba = db.file("/etc/postgresql/15/main/pg_hba.conf")
    assert hba.mode == 0o640
    cfg = stack["harness"].cfg
    app_hosts = {str(h.address(cfg.subnet)) for h in stack["topology"].hosts if {"http", "ws"} & set(h.groups)}
    allowed = {
        line.split()[3].removesuffix("/32")
        for line in hba.content_string.splitlines()
        if line.startswith("host ") and line.split()[1] == "channels"
    }
    assert allowed == app_hosts
    login = "PGPASSWORD=%s psql -h %s -U channels -d channels -tAc 'select 42'"
    assert db.run(login, secrets["postgresql_app_password"], "127.0.0.1").stdout.strip() == "42"
    wrong = db.run(login, "not-the-password", "127.0.0.1")
    assert wrong.rc != 0
    assert "password authentication failed" in wrong.stderr
    own_address = str(stack["topology"].host("db1").address(cfg.subnet))
    refused = db.run(login, secrets["postgresql_app_password"], own_address)  # db1 is no app host
    assert "no pg_hba.conf entry" in refused.stderr


@pytest.mark.parametrize("name", REDIS_HOSTS)
def test_redis_and_sentinel_run_with_auth_on_private_and_loopback_only(converged, hosts, stack, name):
    host = hosts[name]
    private = str(stack["topology"].host(name).address(stack["harness"].cfg.subnet))
    for unit, port in (("redis-server", 6379), ("redis-sentinel", 26379)):
        assert host.service(unit).is_enabled
        assert host.service(unit).is_running
        assert host.socket(f"tcp://{private}:{port}").is_listening
        assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
        assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
        assert "NOAUTH" in host.run("redis-cli -p %s PING", str(port)).stdout
    for path in ("/etc/redis/redis.conf", "/etc/redis/sentinel.conf"):
        conf = host.file(path)
        assert conf.user == "redis"
        assert conf.mode == 0o640


def test_every_sentinel_names_the_same_master_with_two_linked_replicas(converged, hosts, secrets):
    masters = {master_address(hosts, secrets, name) for name in REDIS_HOSTS}
    assert len(masters) == 1
    roles = {name: redis_cli(hosts[name], secrets["redis_password"], "ROLE").stdout.split()[0] for name in REDIS_HOSTS}
    assert sorted(roles.values()) == ["master", "slave", "slave"]
    master = next(name for name, role in roles.items() if role == "master")
    info = redis_cli(hosts[master], secrets["redis_password"], "INFO", "replication").stdout
    assert "connected_slaves:2" in info
    for name in REDIS_HOSTS:
        if name != master:
            assert (
                "master_link_status:up"
                in redis_cli(hosts[name], secrets["redis_password"], "INFO", "replication").stdout
            )
    sentinel = redis_cli(
        hosts[master], secrets["redis_sentinel_password"], "SENTINEL", "master", "channels", port=26379
    ).stdout.split()
    assert sentinel[sentinel.index("quorum") + 1] == "2"
    assert sentinel[sentinel.index("num-other-sentinels") + 1] == "2"


def test_a_rerun_after_a_failover_keeps_the_new_master(converged, hosts, secrets):
    before = master_address(hosts, secrets, "redis1")
    out = redis_cli(hosts["redis1"], secrets["redis_sentinel_password"], "SENTINEL", "FAILOVER", "channels", port=26379)
    assert out.stdout.strip() == "OK", out.stdout + out.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = {master_address(hosts, secrets, name) for name in REDIS_HOSTS}
        if len(seen) == 1 and before not in seen:
            break
        time.sleep(1)
    after = master_address(hosts, secrets, "redis1")
    assert after != before, "the failover did not happen"
    result = ansible_playbook("site.yml", "--tags", "redis")
    assert result.returncode == 0, result.stdout[-4000:]
    assert all(r["changed"] == 0 for r in recap(result.stdout).values()), result.stdout[-4000:]
    assert {master_address(hosts, secrets, name) for name in REDIS_HOSTS} == {after}
