"""The data tiers as an SRE checks them: PostgreSQL on db, Redis + Sentinel on redis."""

from __future__ import annotations

import pytest

from tests.replicas.conftest import (
    MASTER,
    REDIS_PORT,
    SENTINEL_PORT,
    fact,
    first,
    master_address,
    names,
    recap,
    redis_cli,
    sentinel_failover,
)

REDIS_HOSTS = names("redis")
DB = first("db")


def test_postgresql_listens_on_the_private_address_and_loopback_only(converged, hosts, stack):
    db = hosts[DB]
    assert db.package("postgresql-15").is_installed
    service = db.service("postgresql@15-main")
    assert service.is_enabled
    assert service.is_running
    private = stack.address(DB)
    port = fact("postgresql_port")
    assert db.socket(f"tcp://{private}:{port}").is_listening
    assert db.socket(f"tcp://127.0.0.1:{port}").is_listening
    assert not db.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_postgresql_admits_the_app_role_by_password_and_only_from_the_app_hosts(converged, hosts, stack, secrets):
    db = hosts[DB]
    hba = db.file("/etc/postgresql/15/main/pg_hba.conf")
    assert hba.mode == 0o640
    app_hosts = {stack.address(h.name) for h in stack.topology.hosts if {"http", "ws"} & set(h.groups)}
    allowed = {
        line.split()[3].removesuffix("/32")
        for line in hba.content_string.splitlines()
        if line.startswith("host ") and line.split()[1:3] == ["channels", "channels"]
    }
    assert allowed == app_hosts
    login = "PGPASSWORD=%s psql -h %s -U channels -d channels -tAc 'select 42'"
    assert db.run(login, secrets["postgresql_app_password"], "127.0.0.1").stdout.strip() == "42"
    wrong = db.run(login, "not-the-password", "127.0.0.1")
    assert wrong.rc != 0
    assert "password authentication failed" in wrong.stderr
    own_address = stack.address(DB)
    if own_address not in app_hosts:  # all-in-one: the db host is an app host too
        refused = db.run(login, secrets["postgresql_app_password"], own_address)
        assert "no pg_hba.conf entry" in refused.stderr


@pytest.mark.parametrize("name", REDIS_HOSTS)
def test_redis_and_sentinel_run_with_auth_on_private_and_loopback_only(converged, hosts, stack, name):
    host = hosts[name]
    private = stack.address(name)
    for unit, port in (("redis-server", REDIS_PORT), ("redis-sentinel", SENTINEL_PORT)):
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


def test_every_sentinel_names_the_same_master_and_every_replica_is_linked(converged, hosts, secrets):
    masters = {master_address(hosts, secrets, name) for name in REDIS_HOSTS}
    assert len(masters) == 1
    roles = {name: redis_cli(hosts[name], secrets["redis_password"], "ROLE").stdout.split()[0] for name in REDIS_HOSTS}
    assert sorted(roles.values()) == ["master"] + ["slave"] * (len(REDIS_HOSTS) - 1)
    master = next(name for name, role in roles.items() if role == "master")
    info = redis_cli(hosts[master], secrets["redis_password"], "INFO", "replication").stdout
    assert f"connected_slaves:{len(REDIS_HOSTS) - 1}" in info
    for name in REDIS_HOSTS:
        if name != master:
            assert (
                "master_link_status:up"
                in redis_cli(hosts[name], secrets["redis_password"], "INFO", "replication").stdout
            )
    sentinel = redis_cli(
        hosts[master], secrets["redis_sentinel_password"], "SENTINEL", "master", MASTER, port=SENTINEL_PORT
    ).stdout.split()
    # Quorum is a majority of the sentinels.
    assert sentinel[sentinel.index("quorum") + 1] == str(len(REDIS_HOSTS) // 2 + 1)
    assert sentinel[sentinel.index("num-other-sentinels") + 1] == str(len(REDIS_HOSTS) - 1)


@pytest.mark.skipif(len(REDIS_HOSTS) < 2, reason="a single Redis host has no replica to fail over to")
def test_a_rerun_after_a_failover_keeps_the_new_master(converged, stack, hosts, secrets):
    _, after = sentinel_failover(hosts, secrets)
    result = stack.playbook("site.yml", "--tags", "redis")
    assert result.returncode == 0, result.stdout[-4000:]
    assert all(r["changed"] == 0 for r in recap(result.stdout).values()), result.stdout[-4000:]
    assert {master_address(hosts, secrets, name) for name in REDIS_HOSTS} == {after}
