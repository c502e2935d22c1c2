"""The replica harness itself: hosts, addresses, reachability, lifecycle, cleanup."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from replicas import host as host_mod
from replicas import network, sysctl
from replicas.config import from_env
from replicas.harness import Harness
from replicas.system import HarnessError, mounts_under, nspawn_pids_for
from tests.replicas.conftest import TOPOLOGY_NAME, ansible


@pytest.fixture(autouse=True)
def whole_stack_after(request, stack):
    """After each drill, every host is up again, whatever the drill left (a failed one too).

    One drill's failure then never cascades into the next; `up` changes nothing on a whole stack.
    """
    yield
    if request.node.get_closest_marker("last") is None and stack.kind == "replicas":
        stack.harness.up(TOPOLOGY_NAME)


def test_every_host_runs_systemd_under_its_own_name_and_address(stack, on):
    cfg = stack.harness.cfg
    for h in stack.topology.hosts:
        result = on(h.name, "hostname; ip -4 -o addr show host0; systemctl is-system-running")
        assert result.returncode == 0, result.stderr
        hostname, addr_line, state = result.stdout.strip().splitlines()
        assert hostname == h.name
        assert f" {h.address(cfg.subnet)}/{cfg.subnet.prefixlen} " in addr_line
        assert state == "running"


def test_inventory_matches_the_topology_with_unique_names_and_addresses(stack):
    cfg = stack.harness.cfg
    inventory = yaml.safe_load(cfg.inventory_path.read_text())["all"]
    addresses = {name: v["ansible_host"] for name, v in inventory["hosts"].items()}
    assert addresses == {h.name: str(h.address(cfg.subnet)) for h in stack.topology.hosts}
    assert len(set(addresses.values())) == len(addresses)
    assert all(ipaddress.ip_address(a) in cfg.subnet for a in addresses.values())
    for group, members in inventory["children"].items():
        assert list(members["hosts"]) == [h.name for h in stack.topology.group(group)]


def test_hosts_reach_each_other_across_the_bridge(stack, on):
    cfg = stack.harness.cfg
    targets = " ".join(str(h.address(cfg.subnet)) for h in stack.topology.hosts)
    for source in ("ws1", "mon1"):
        result = on(source, f"for a in {targets}; do ping -c1 -W2 $a >/dev/null || echo unreachable $a; done")
        assert result.returncode == 0
        assert result.stdout.strip() == "", result.stdout


def test_controller_reaches_each_host_over_ssh_with_a_pinned_host_key(stack):
    cfg = stack.harness.cfg
    known = cfg.known_hosts.read_text().splitlines()
    assert len(known) == len(stack.topology.hosts)
    for h in stack.topology.hosts:
        argv = [*stack.harness.ssh_argv(str(h.address(cfg.subnet)), user="admin"), "sudo -n true && echo ok"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert result.stdout.strip() == "ok", result.stderr


def test_ansible_reaches_every_host_and_sees_systemd(stack):
    ping = ansible("ansible", "all", "-m", "ansible.builtin.ping", "-o", timeout=300)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert ping.stdout.count("SUCCESS") == len(stack.topology.hosts)
    facts = ansible("ansible", "all", "-m", "ansible.builtin.setup", "-a", "filter=ansible_service_mgr", "-o")
    assert facts.returncode == 0, facts.stdout + facts.stderr
    assert facts.stdout.count('"ansible_service_mgr": "systemd"') == len(stack.topology.hosts)


def test_stop_takes_a_host_away_and_start_brings_it_back(stack, on):
    harness = stack.harness
    harness.stop("redis3")
    assert on("redis3", "true", timeout=10).returncode != 0
    assert on("redis1", "ping -c1 -W1 redis3").returncode != 0
    assert not host_mod.container_pids(host_mod.paths(harness.cfg, "redis3"))
    harness.start("redis3")
    assert on("redis3", "systemctl is-system-running").stdout.strip() == "running"
    assert on("redis1", "ping -c1 -W2 redis3").returncode == 0


def test_the_inotify_limit_holds_the_stack_while_it_runs(stack, harness):
    # Every host's systemd, logind and dbus hold inotify instances as root (shared user ids):
    # Linux's default of 128 per user lets about twelve hosts boot.
    assert int(sysctl.INOTIFY_INSTANCES.read_text()) >= sysctl.inotify_instances_needed(len(stack.topology.hosts))
    assert "fs.inotify.max_user_instances" in json.loads(harness.cfg.sysctl_record.read_text())


def test_up_again_changes_nothing(stack, harness):
    pids = {name: h["pid"] for name, h in harness.load_state()["hosts"].items()}
    report = harness.up("scaled")
    assert report["booted"] == []
    assert {name: h["pid"] for name, h in harness.load_state()["hosts"].items()} == pids


def test_up_recovers_after_a_crash_that_left_mounts_and_state_behind(stack, harness, on):
    crashed = ["http2", "db1"]
    for name in crashed:
        # Every process of the container SIGKILLed (one that exits on its own meanwhile is fine).
        host_mod.stop(host_mod.paths(harness.cfg, name), kill=True)
    # The overlay mounts still claim the hosts, and the run died while writing its state.
    assert all(host_mod.is_mounted(host_mod.paths(harness.cfg, name)) for name in crashed)
    harness.cfg.state_file.write_text('{"topology": "scaled", "hosts": {"lb1": ')
    report = harness.up("scaled")
    # With the state lost, every host is recreated from what is on disk; none is left half-alive.
    assert set(crashed) <= set(report["booted"])
    for h in stack.topology.hosts:
        assert on(h.name, "systemctl is-system-running").stdout.strip() == "running"
    assert harness.up("scaled")["booted"] == []


def test_reset_recreates_a_host_from_the_base_image(stack, on, harness):
    assert on("db1", "echo scribble > /root/scribble && test -f /root/scribble").returncode == 0
    harness.reset("db1")
    assert on("db1", "test -f /root/scribble").returncode == 1
    assert on("db1", "systemctl is-system-running").stdout.strip() == "running"


def test_a_subnet_or_bridge_in_use_stops_up_before_anything_is_made(tmp_path):
    cfg_env = {
        **os.environ,
        "REPLICAS_SUBNET": "10.79.0.0/24",
        "REPLICAS_BRIDGE": "chclash0",
        "REPLICAS_STATE_DIR": str(tmp_path / "state"),
        "REPLICAS_INVENTORY": str(tmp_path / "hosts.yml"),
    }
    subprocess.run(["ip", "link", "add", "chtest0", "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.79.0.5/24", "dev", "chtest0"], check=True)
        with pytest.raises(HarnessError, match=r"overlaps 10\.79\.0\.5/24 on chtest0"):
            Harness(from_env(cfg_env)).up("all-in-one")
        subprocess.run(["ip", "link", "set", "chtest0", "name", "chclash0"], check=True)
        subprocess.run(["ip", "addr", "flush", "dev", "chclash0"], check=True)
        with pytest.raises(HarnessError, match="chclash0 exists and was not made by the harness"):
            Harness(from_env(cfg_env)).up("all-in-one")
        clash_cfg = from_env(cfg_env)
        assert not network.nft_table_exists(clash_cfg)
        assert not (tmp_path / "state").exists()
    finally:
        for name in ("chtest0", "chclash0"):
            subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


@pytest.mark.last
def test_down_removes_everything_and_is_idempotent(stack, harness):
    cfg = harness.cfg
    # The values before the first up, kept apart from the state file (the crash drill above
    # corrupts that one): forwarding and the inotify limit go back to them.
    before = json.loads(cfg.sysctl_record.read_text())
    harness.down()
    harness.down()
    for name, value in before.items():
        assert sysctl.SETTINGS[name].read_text().strip() == value, name
    assert mounts_under(cfg.state_dir) == []
    assert not cfg.state_dir.exists()
    assert not cfg.inventory_path.exists()
    assert nspawn_pids_for(cfg.state_dir) == []
    assert not network.bridge_exists(cfg)
    assert not network.nft_table_exists(cfg)
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout)
    assert not [link for link in links if link["ifname"].startswith("vb-")]
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{cfg.cgroup_parent}"))
