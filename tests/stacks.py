"""The stack the blueprint tests run against: container replicas, or Vagrant's VMs.

Both give the tests the same things: each host's private address, a command
run as root on a host, a testinfra host, site.yml applied the way that stack's
users apply it, and any other playbook against its inventory.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import subprocess
from pathlib import Path

import testinfra

from replicas.harness import Harness
from replicas.topology import DEFAULTS, Topology
from tests.ansible_cli import ansible_playbook, venv_env

ROOT = Path(__file__).resolve().parent.parent


class ReplicaStack:
    """The systemd-nspawn replicas; site.yml run with ansible-playbook over the harness's inventory."""

    kind = "replicas"

    def __init__(self, harness: Harness, topology: Topology):
        self.harness = harness
        self.topology = topology

    def up(self) -> dict:
        return self.harness.up(self.topology.name)

    def down(self) -> None:
        self.harness.down()

    def address(self, name: str) -> str:
        return str(self.topology.host(name).address(self.harness.cfg.subnet))

    def run(self, name: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.harness.run_on(self.topology.host(name), command, timeout=timeout)

    def testinfra(self, name: str):
        cfg = self.harness.cfg
        extra = f"-o UserKnownHostsFile={cfg.known_hosts} -o StrictHostKeyChecking=yes"
        return testinfra.get_host(
            f"ssh://root@{self.address(name)}", ssh_identity_file=str(cfg.ssh_key), ssh_extra_args=extra
        )

    def converge(self) -> subprocess.CompletedProcess[str]:
        return ansible_playbook("site.yml")

    def playbook(self, *args: str) -> subprocess.CompletedProcess[str]:
        return ansible_playbook(*args)


class VagrantStack:
    """Vagrant's machines (the Vagrantfile, CHANNELS_* settings from the environment).

    site.yml is applied by `vagrant provision`, Vagrant's own Ansible provisioner;
    other playbooks run over the inventory that provisioner generates, with the
    same extra-vars files the Vagrantfile passes.
    """

    kind = "vagrant"

    def __init__(self, topology: Topology, state_dir: Path):
        self.topology = topology
        self.subnet = ipaddress.ip_network(os.environ.get("CHANNELS_SUBNET", DEFAULTS["subnet"]))
        self.ssh_config = state_dir / "ssh_config"
        dotfile = Path(os.environ.get("VAGRANT_DOTFILE_PATH", ROOT / ".vagrant"))
        self.inventory = dotfile / "provisioners" / "ansible" / "inventory" / "vagrant_ansible_inventory"

    def vagrant(self, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["vagrant", *args], cwd=ROOT, env=venv_env(), capture_output=True, text=True, timeout=timeout, check=False
        )

    def up(self) -> dict:
        result = self.vagrant("up", "--provider=libvirt", "--no-provision")
        if result.returncode != 0:
            raise RuntimeError(f"vagrant up failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        config = self.vagrant("ssh-config")
        if config.returncode != 0:
            raise RuntimeError(f"vagrant ssh-config failed: {config.stderr}")
        self.ssh_config.parent.mkdir(parents=True, exist_ok=True)
        self.ssh_config.write_text(config.stdout)
        return {"output": result.stdout}

    def down(self) -> None:
        self.vagrant("destroy", "--force", timeout=900)

    def address(self, name: str) -> str:
        return str(self.topology.host(name).address(self.subnet))

    def run(self, name: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", name, "sudo sh -c " + shlex.quote(command)]
        try:
            return subprocess.run(argv, text=True, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 255, "", f"timed out after {timeout}s")

    def testinfra(self, name: str):
        return testinfra.get_host(f"ssh://{name}", ssh_config=str(self.ssh_config), sudo=True)

    def converge(self) -> subprocess.CompletedProcess[str]:
        return self.vagrant("provision")

    @staticmethod
    def extra_vars() -> list[str]:
        """The extra vars `vagrant provision` passes, in its order: the Vagrantfile's, then its files
        (topologies/defaults.yml's, then CHANNELS_ANSIBLE_EXTRA_VARS's). A unit test holds them equal."""
        extra = []
        if "CHANNELS_GRAFANA_INSTALL" in os.environ:
            grafana = {"grafana_install": os.environ["CHANNELS_GRAFANA_INSTALL"] == "true"}
            extra += ["--extra-vars", json.dumps(grafana)]
        files = [*DEFAULTS["vagrant_extra_vars"], *extra_vars_files()]
        return extra + [arg for path in files for arg in ("--extra-vars", f"@{ROOT / 'ansible' / path}")]

    def playbook(self, *args: str) -> subprocess.CompletedProcess[str]:
        extra = self.extra_vars()
        # SSH as Vagrant's provisioner sets it up: the machines are new on every `vagrant up`,
        # so their host keys are neither checked nor remembered.
        ssh = {"ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_SSH_COMMON_ARGS": "-o UserKnownHostsFile=/dev/null"}
        return ansible_playbook("-i", str(self.inventory), *extra, *args, env=ssh)


def extra_vars_files() -> list[str]:
    """CHANNELS_ANSIBLE_EXTRA_VARS: more extra-vars files (paths relative to ansible/), as the Vagrantfile reads it."""
    return [part for part in os.environ.get("CHANNELS_ANSIBLE_EXTRA_VARS", "").split(":") if part]
