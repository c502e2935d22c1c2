"""The Vagrantfile gives the topology source's hosts, groups and addresses, and Vagrant
accepts it for both providers.

The machines are read by loading the Vagrantfile in Ruby with a recording
stand-in for Vagrant's config (vagrant_plan.rb): no VM, no box. VirtualBox is
not installed here, so its provider block is validated with a stand-in
VBoxManage that only reports a version.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

import pytest

from replicas.topology import load
from tests.stacks import VagrantStack

ROOT = Path(__file__).resolve().parents[2]


def vagrant_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # Vagrant keeps its state in VAGRANT_HOME and .vagrant: both out of the checkout's way.
    return {
        **os.environ,
        "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
        **extra,
    }


def plan(tmp_path: Path, **extra: str) -> dict:
    result = subprocess.run(
        ["ruby", str(ROOT / "tests/unit/vagrant_plan.rb"), str(ROOT / "Vagrantfile")],
        cwd=ROOT, env=vagrant_env(tmp_path, **extra), capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def machines(config: dict) -> dict[str, dict]:
    return {m["args"][0]: m["value"] for m in config["vm"]["define"]["_each"]}


@pytest.mark.parametrize("topology", ["scaled", "all-in-one"])
def test_the_machines_are_the_topology_hosts_with_their_addresses(tmp_path, topology):
    topo = load(topology)
    defined = machines(plan(tmp_path, CHANNELS_TOPOLOGY=topology))
    assert list(defined) == [h.name for h in topo.hosts]
    subnet = ipaddress.ip_network("10.77.0.0/24")
    for host in topo.hosts:
        network = defined[host.name]["vm"]["network"]["_each"]
        assert [(n["args"][0], n["kwargs"]["ip"]) for n in network] == [("private_network", str(host.address(subnet)))]
        assert defined[host.name]["vm"]["hostname"] == host.name


@pytest.mark.parametrize("topology", ["scaled", "all-in-one"])
def test_one_ansible_run_over_all_machines_with_the_topology_groups(tmp_path, topology):
    topo = load(topology)
    defined = machines(plan(tmp_path, CHANNELS_TOPOLOGY=topology))
    provisioners = {name: m["vm"]["provision"]["_each"] for name, m in defined.items() if "provision" in m["vm"]}
    # Only the last machine provisions, once every machine is up, with limit "all".
    assert list(provisioners) == [topo.hosts[-1].name]
    (ansible,) = provisioners[topo.hosts[-1].name]
    settings = ansible["value"]
    assert ansible["args"] == ["ansible"]
    assert settings["playbook"] == "ansible/site.yml"
    assert settings["limit"] == "all"
    groups = {name: hosts for name, hosts in settings["groups"].items() if not name.endswith(":vars")}
    assert groups == {group: [h.name for h in topo.group(group)] for group in groups}
    assert set(groups) == {"lb", "http", "ws", "redis", "db", "monitoring"}
    # The gateway rides in the generated inventory (any playbook over it gets it); a boolean
    # cannot (INI group vars are strings), so grafana_install is an extra var, passed only
    # when CHANNELS_GRAFANA_INSTALL says so (else the grafana role's default).
    assert settings["groups"]["all:vars"] == {"blueprint_vagrant_gateway": "10.77.0.1"}
    assert "extra_vars" not in settings
    # The replicas' generated secrets, then Vagrant's own settings.
    files = settings["raw_arguments"][1::2]
    assert [f.removeprefix("@" + str(ROOT) + "/") for f in files] == [
        "ansible/vars/generated_secrets.yml",
        "ansible/inventories/vagrant/vars.yml",
    ]


def test_more_extra_vars_files_and_the_network_are_settings(tmp_path):
    config = plan(
        tmp_path,
        CHANNELS_TOPOLOGY="all-in-one",
        CHANNELS_ANSIBLE_EXTRA_VARS="vars/local_stacks.yml:",
        CHANNELS_SUBNET="10.78.0.0/24",
        CHANNELS_GRAFANA_INSTALL="false",
    )
    (aio,) = machines(config).values()
    assert aio["vm"]["network"]["_each"][0]["kwargs"]["ip"] == "10.78.0.11"
    settings = aio["vm"]["provision"]["_each"][0]["value"]
    assert settings["groups"]["all:vars"] == {"blueprint_vagrant_gateway": "10.78.0.1"}
    assert settings["extra_vars"] == {"grafana_install": False}
    files = [f.removeprefix("@" + str(ROOT) + "/") for f in settings["raw_arguments"][1::2]]
    assert files[2:] == ["ansible/vars/local_stacks.yml"]
    assert all(Path(f.removeprefix("@")).is_file() for f in settings["raw_arguments"][1::2])


def test_memory_and_cpus_per_group_are_settings(tmp_path):
    defined = machines(plan(tmp_path, CHANNELS_MEMORY_WS="3072", CHANNELS_CPUS_WS="4"))
    providers = {p["args"][0]: p["value"] for p in defined["ws1"]["vm"]["provider"]["_each"]}
    assert (providers["libvirt"]["memory"], providers["libvirt"]["cpus"]) == (3072, 4)
    assert (providers["virtualbox"]["memory"], providers["virtualbox"]["cpus"]) == (3072, 4)
    # A host in several groups gets the largest of its groups' sizes.
    aio = machines(plan(tmp_path, CHANNELS_TOPOLOGY="all-in-one", CHANNELS_MEMORY_DB="4096"))
    assert {p["args"][0]: p["value"]["memory"] for p in aio["aio1"]["vm"]["provider"]["_each"]}["libvirt"] == 4096


@pytest.mark.parametrize("provider", ["libvirt", "virtualbox"])
@pytest.mark.parametrize("topology", ["scaled", "all-in-one"])
def test_vagrant_validates_the_vagrantfile(tmp_path, provider, topology):
    fake = tmp_path / "bin"
    fake.mkdir()
    vboxmanage = fake / "VBoxManage"
    vboxmanage.write_text('#!/bin/sh\n[ "$1" = --version ] && echo 7.0.8r156879\nexit 0\n')
    vboxmanage.chmod(0o755)
    env = vagrant_env(
        tmp_path,
        CHANNELS_TOPOLOGY=topology,
        CHANNELS_LIBVIRT_DRIVER="qemu",
        VAGRANT_DEFAULT_PROVIDER=provider,
        PATH=f"{fake}:{os.environ['PATH']}",
    )
    result = subprocess.run(
        ["vagrant", "validate"], cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


def test_validation_catches_a_wrong_provider_setting(tmp_path):
    broken = tmp_path / "Vagrantfile"
    broken.write_text((ROOT / "Vagrantfile").read_text().replace("lv.cpus = spec", "lv.cpu_count = spec"))
    (tmp_path / "topologies").symlink_to(ROOT / "topologies")
    env = vagrant_env(tmp_path, VAGRANT_DEFAULT_PROVIDER="libvirt")
    result = subprocess.run(["vagrant", "validate"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "cpu_count" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "env",
    [{}, {"CHANNELS_GRAFANA_INSTALL": "false", "CHANNELS_ANSIBLE_EXTRA_VARS": "vars/local_stacks.yml"}],
    ids=["defaults", "settings"],
)
def test_other_playbooks_on_the_vms_get_the_extra_vars_the_vagrantfile_passes(tmp_path, monkeypatch, env):
    """tests/stacks.py runs playbooks over Vagrant's inventory outside Vagrant: same extra vars, same order."""
    for name in ("CHANNELS_GRAFANA_INSTALL", "CHANNELS_ANSIBLE_EXTRA_VARS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (last,) = (m for m in machines(plan(tmp_path)).values() if "provision" in m["vm"])
    settings = last["vm"]["provision"]["_each"][0]["value"]
    passed = ["--extra-vars", json.dumps(settings["extra_vars"])] if "extra_vars" in settings else []
    assert VagrantStack.extra_vars() == passed + settings["raw_arguments"]
