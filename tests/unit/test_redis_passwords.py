"""The redis and redis_sentinel roles' password tasks (README: Security, rotating the Redis and
Sentinel passwords), run against a real redis-server and redis-sentinel on loopback: the new
password beside the old, then the old dropped; nothing changed on a second run; a password Redis
does not hold refused with what to do. Sentinel's one restart happens on the replicas (the drill
test_redis_and_sentinel_passwords_rotate_keeping_every_socket): there is no systemd here.
The redis_sentinel role's shard tasks run against the same Sentinel: a shard's master added to a
running Sentinel, and removed; a sentinel of a host gone from the inventory forgotten, and the
quorum moved with the number of redis hosts."""

from __future__ import annotations

import json
import operator
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.ansible_cli import ROOT, ansible_playbook

OLD, NEW = "old0Password0Redis0", "new1Password1Redis1"
SENTINEL_OLD, SENTINEL_NEW = "old0Password0Sentinel", "new1Password1Sentinel"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: str, conf: Path, lines: list[str]) -> subprocess.Popen:
    conf.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen([command, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = int(lines[0].split()[1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise TimeoutError(f"{command} is not listening on {port}")


@pytest.fixture
def servers(tmp_path):
    """A Redis with OLD, and a Sentinel watching it with SENTINEL_OLD (its line as Sentinel writes it
    after a first change: the template's requirepass line goes at Sentinel's restart)."""
    redis_port, sentinel_port = free_port(), free_port()
    redis = start(
        "redis-server",
        tmp_path / "redis.conf",
        [
            f"port {redis_port}",
            "bind 127.0.0.1 127.0.0.2",  # a second shard's master, for the shard tasks' test
            f"dir {tmp_path}",
            'save ""',
            f"requirepass {OLD}",
            f"masterauth {OLD}",
        ],
    )
    sentinel = start(
        "redis-sentinel",
        tmp_path / "sentinel.conf",
        [
            f"port {sentinel_port}",
            "bind 127.0.0.1",
            f"dir {tmp_path}",
            f"user default on >{SENTINEL_OLD} ~* &* +@all",
            f"sentinel sentinel-pass {SENTINEL_OLD}",
            f"sentinel monitor channels 127.0.0.1 {redis_port} 1",
            f"sentinel auth-pass channels {OLD}",
        ],
    )
    yield {"redis": redis_port, "sentinel": sentinel_port, "dir": tmp_path}
    for process in (sentinel, redis):
        process.terminate()
        process.wait(10)


def run_tasks(servers, name: str, values: dict, tasks: list[tuple[str, str]]) -> tuple[int, str]:
    """The roles' task files (role, file) with these values, on localhost: (changed tasks, output)."""
    folder = servers["dir"]
    play = folder / f"{name}.yml"
    values_file = folder / f"{name}.json"  # a file, as a vault would be
    values_file.write_text(json.dumps({"blueprint_files_root": str(ROOT), **values}))
    included = [
        {"ansible.builtin.include_role": {"name": str(ROOT / "ansible/roles" / role), "tasks_from": tasks_from}}
        for role, tasks_from in tasks
    ]
    play.write_text(
        json.dumps([{"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": included}])
    )
    result = ansible_playbook("-i", "localhost,", str(play), "-e", f"@{values_file}", timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return int(re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)", output)[1]), output


def converge(servers, redis: tuple[str, list[str]], sentinel: tuple[str, list[str]]) -> tuple[int, str]:
    """Both roles' passwords.yml with these (current, previous) passwords: (changed tasks, output)."""
    values = {
        "redis_port": servers["redis"],
        "redis_password": redis[0],
        "redis_password_previous": redis[1],
        "redis_sentinel_port": servers["sentinel"],
        "redis_sentinel_password": sentinel[0],
        "redis_sentinel_password_previous": sentinel[1],
        "redis_sentinel_masters": {"channels": "127.0.0.1"},
        "redis_sentinel_redis_password": redis[0],
        "__redis_sentinel_conf": str(servers["dir"] / "sentinel.conf"),
    }
    return run_tasks(servers, "passwords", values, [("redis", "passwords.yml"), ("redis_sentinel", "passwords.yml")])


def accepted(servers) -> dict[str, list[str]]:
    """The passwords, of OLD, NEW, SENTINEL_OLD and SENTINEL_NEW, each server answers PING with."""
    candidates = {"OLD": OLD, "NEW": NEW, "SENTINEL_OLD": SENTINEL_OLD, "SENTINEL_NEW": SENTINEL_NEW}
    return {
        server: [
            name
            for name, password in candidates.items()
            if cli(servers[server], password, "PING", check=False) == ["PONG"]
        ]
        for server in ("redis", "sentinel")
    }


def test_a_rotation_accepts_both_then_only_the_new_passwords_and_leaves_no_old_one_in_the_files(servers):
    changed, _ = converge(servers, (NEW, [OLD]), (SENTINEL_NEW, [SENTINEL_OLD]))
    assert changed == 4  # Redis: accept, masterauth; Sentinel: accept, use
    assert accepted(servers) == {"redis": ["OLD", "NEW"], "sentinel": ["SENTINEL_OLD", "SENTINEL_NEW"]}
    assert f'masterauth "{NEW}"' in (servers["dir"] / "redis.conf").read_text()
    assert f"sentinel auth-pass channels {NEW}" in (servers["dir"] / "sentinel.conf").read_text()
    assert f"sentinel sentinel-pass {SENTINEL_NEW}" in (servers["dir"] / "sentinel.conf").read_text()

    assert converge(servers, (NEW, [OLD]), (SENTINEL_NEW, [SENTINEL_OLD]))[0] == 0

    changed, _ = converge(servers, (NEW, []), (SENTINEL_NEW, []))
    assert changed == 4
    assert accepted(servers) == {"redis": ["NEW"], "sentinel": ["SENTINEL_NEW"]}
    files = "".join((servers["dir"] / name).read_text() for name in ("redis.conf", "sentinel.conf"))
    assert [old for old in (OLD, SENTINEL_OLD) if old in files] == []

    assert converge(servers, (NEW, []), (SENTINEL_NEW, []))[0] == 0


def test_a_password_redis_does_not_hold_and_is_not_listed_stops_the_run_with_what_to_do(servers):
    with pytest.raises(AssertionError, match="list the one it has in vault_redis_password_previous"):
        converge(servers, (NEW, []), (SENTINEL_OLD, []))
    assert accepted(servers) == {"redis": ["OLD"], "sentinel": ["SENTINEL_OLD"]}  # untouched


def watch(servers, masters: dict[str, str], quorum: int = 1, **inventory) -> tuple[int, str]:
    """The redis_sentinel role's shards.yml for these masters (name: address), with `inventory`'s
    variables: (changed tasks, output). The inventory's one redis host is this one, at 127.0.0.1."""
    values = {
        "redis_sentinel_peer_hosts": ["localhost"],
        "redis_sentinel_peer_addresses": ["127.0.0.1"],
        "redis_sentinel_port": servers["sentinel"],
        "redis_sentinel_password": SENTINEL_OLD,
        "redis_sentinel_masters": masters,
        "redis_sentinel_redis_port": servers["redis"],
        "redis_sentinel_redis_password": OLD,
        "redis_sentinel_quorum": quorum,
        **inventory,
    }
    return run_tasks(servers, "shards", values, [("redis_sentinel", "shards.yml")])


def cli(port: int, password: str, *command: str, check: bool = True) -> list[str]:
    """redis-cli COMMAND on a loopback port, signed in with password: the answer's lines."""
    return subprocess.run(
        ["redis-cli", "-p", str(port), "--no-auth-warning", *command],
        env={"REDISCLI_AUTH": password, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
        check=check,
    ).stdout.splitlines()


def sentinel(servers, *command: str) -> list[str]:
    return cli(servers["sentinel"], SENTINEL_OLD, *command)


def test_a_shard_added_to_the_inventory_is_watched_by_a_running_sentinel_and_one_removed_is_dropped(servers):
    two = {"channels": "127.0.0.1", "channels-1": "127.0.0.2"}
    changed, _ = watch(servers, two)
    assert changed == 2  # channels-1 watched; channels, watched with Sentinel's defaults, given the role's
    master = master_fields(servers, "channels-1")
    assert (master["ip"], master["port"], master["quorum"]) == ("127.0.0.2", str(servers["redis"]), "1")
    for name in two:  # the role's defaults
        settings = operator.itemgetter("down-after-milliseconds", "failover-timeout", "parallel-syncs")
        assert settings(master_fields(servers, name)) == ("5000", "10000", "1")
    saved = (servers["dir"] / "sentinel.conf").read_text()
    assert "sentinel monitor channels-1 127.0.0.2" in saved

    assert watch(servers, two)[0] == 0  # nothing to do once watched

    # The inventory changes the failover timeout: the running sentinel follows, for every master.
    assert watch(servers, two, redis_sentinel_failover_timeout_ms=20000)[0] == 1
    assert [master_fields(servers, name)["failover-timeout"] for name in two] == ["20000", "20000"]
    assert "sentinel failover-timeout channels-1 20000" in (servers["dir"] / "sentinel.conf").read_text()
    assert watch(servers, two, redis_sentinel_failover_timeout_ms=20000)[0] == 0

    changed, _ = watch(servers, {"channels": "127.0.0.1"})
    assert changed == 2  # channels-1 dropped; channels back to the default failover timeout
    assert master_fields(servers)["failover-timeout"] == "10000"
    assert sentinel(servers, "SENTINEL", "MASTER", "channels-1")[0] == "ERR No such master with that name"
    assert "channels-1" not in (servers["dir"] / "sentinel.conf").read_text()
    assert sentinel(servers, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "channels")[0] == "127.0.0.1"


def master_fields(servers, name: str = "channels") -> dict[str, str]:
    fields = sentinel(servers, "SENTINEL", "MASTER", name)
    return dict(zip(fields[::2], fields[1::2], strict=True))


def test_a_sentinel_of_a_host_gone_from_the_inventory_is_forgotten_and_the_quorum_follows_the_hosts(servers):
    # A second sentinel, of a host at 127.0.0.3 that is not (any more) in the inventory: the first
    # learns it from its hello messages, then it goes away; the first still counts it as a voter.
    gone = start(
        "redis-sentinel",
        servers["dir"] / "gone.conf",
        [
            f"port {free_port()}",
            "bind 127.0.0.1",
            f"dir {servers['dir']}",
            "sentinel announce-ip 127.0.0.3",
            f"sentinel monitor channels 127.0.0.1 {servers['redis']} 1",
            f"sentinel auth-pass channels {OLD}",
        ],
    )
    try:
        deadline = time.monotonic() + 20
        while master_fields(servers)["num-other-sentinels"] != "1" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert master_fields(servers)["num-other-sentinels"] == "1"
    finally:
        gone.terminate()
        gone.wait(10)
    assert sentinel(servers, "SENTINEL", "SENTINELS", "channels")[3] == "127.0.0.3"

    # The inventory's redis hosts went from one to three: the quorum is 2 (a majority).
    changed, output = watch(servers, {"channels": "127.0.0.1"}, quorum=2)
    assert changed == 2, output[-3000:]  # the quorum set, the sentinel at 127.0.0.3 forgotten
    fields = master_fields(servers)
    assert (fields["quorum"], fields["num-other-sentinels"]) == ("2", "0")
    assert "127.0.0.3" not in (servers["dir"] / "sentinel.conf").read_text()
    assert sentinel(servers, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "channels")[0] == "127.0.0.1"

    assert watch(servers, {"channels": "127.0.0.1"}, quorum=2)[0] == 0
