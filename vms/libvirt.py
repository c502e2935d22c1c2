"""libvirt for the VM tests, started by hand and taken away again (systemd is not PID 1 here).

``start`` runs libvirtd as a background daemon with its own settings, the
QEMU driver's settings in ``/etc/libvirt/qemu.conf`` (written by us, removed
by ``stop``), and creates transient networks and a storage pool:

- the management network Vagrant reaches the VMs over (vagrant-libvirt's
  ``vagrant-libvirt``, 192.168.121.0/24, DHCP), and the topology's private
  network; both in libvirt's ``open`` forward mode, so libvirt adds no
  firewall rules of its own;
- the replicas' nftables ruleset on each bridge: a masquerade limited to the
  bridge's subnet and to DNS and HTTP(S) (the package mirrors), nothing else;
- a directory pool for the box and the VMs' disks, in the suite's state folder.

The safety rules are the replicas' (docs/architecture.md): refuse to start when the
bridges or subnets are in use, or when another libvirtd runs; ``stop`` stops
every VM, removes the networks, the pool, the nftables tables and the daemon
(by its PID), and restores IPv4 forwarding.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

from replicas import network
from replicas.config import Config
from replicas.system import HarnessError, log, run

URI = "qemu:///system"
SOCKET = Path("/run/libvirt/libvirt-sock")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
QEMU_CONF_MARK = "# channels-vagrant-suite: written by vms/libvirt.py, removed when it stops"
# Software emulation needs no /dev/kvm; root, because there is no udev to hand devices to another user.
QEMU_SETTINGS = f"""{QEMU_CONF_MARK}
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
stdio_handler = "file"
"""
# vagrant-libvirt's defaults (its management network); inventories/vagrant/vars.yml admits SSH from it.
MANAGEMENT_NETWORK = "vagrant-libvirt"
MANAGEMENT_SUBNET = ipaddress.ip_network("192.168.121.0/24")
POOL = "channels-vagrant"
# libvirt's QEMU driver looks its default account up before reading qemu.conf.
ACCOUNT = "libvirt-qemu"


def virsh(*args: str, check: bool = True):
    return run(["virsh", "-q", "-c", URI, *args], check=check)


class Libvirt:
    def __init__(self, state_dir: Path, private_subnet: ipaddress.IPv4Network, template: Config):
        self.state_dir = state_dir
        self.state_file = state_dir / "libvirt.json"
        self.pid_file = state_dir / "libvirtd.pid"
        self.pool_dir = state_dir / "images"
        # The replicas' Config describes a bridge, its subnet and its nftables table: one per network.
        self.networks = {
            MANAGEMENT_NETWORK: replace(template, subnet=MANAGEMENT_SUBNET, bridge="chvagm0"),
            "channels-private": replace(template, subnet=private_subnet, bridge="chvagp0"),
        }

    # -- start ---------------------------------------------------------------
    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ours = self.daemon_pid() is not None
        if not ours and SOCKET.exists() and virsh("version", check=False).returncode == 0:
            raise HarnessError(f"a libvirtd not started by this suite answers on {SOCKET}; stop it first")
        active = set(virsh("net-list", "--name").stdout.split()) if ours else set()
        for name, cfg in self.networks.items():
            if name not in active:
                network.check_no_clash(cfg)
        self._ensure_account()
        self._write_qemu_conf()
        if self.daemon_pid() is None:
            conf = self.state_dir / "libvirtd.conf"
            conf.write_text(
                f'log_outputs = "3:file:{self.state_dir / "libvirtd.log"}"\n'
                'unix_sock_group = "root"\nunix_sock_rw_perms = "0700"\n'
                'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
            )
            log("starting libvirtd")
            run(["libvirtd", "--daemon", "--config", str(conf), "--pid-file", str(self.pid_file)])
            self._wait_for_daemon()
        state = self._load()
        if "forwarding" not in state:
            state["forwarding"] = network.enable_forwarding()
            self._save(state)
        for name, cfg in self.networks.items():
            if name not in active:
                virsh("net-create", str(self._network_xml(name, cfg)))
            network.ensure_nft(cfg)
        if POOL not in virsh("pool-list", "--name").stdout.split():
            self.pool_dir.mkdir(exist_ok=True)
            virsh("pool-create-as", POOL, "dir", "--target", str(self.pool_dir))

    def _ensure_account(self) -> None:
        if run(["getent", "group", ACCOUNT], check=False).returncode != 0:
            log(f"adding system group {ACCOUNT} (libvirt's QEMU driver needs it to exist)")
            run(["groupadd", "--system", ACCOUNT])
        if run(["getent", "passwd", ACCOUNT], check=False).returncode != 0:
            log(f"adding system user {ACCOUNT} (libvirt's QEMU driver needs it to exist)")
            run(["useradd", "--system", "--gid", ACCOUNT, "--no-create-home", "--home-dir", "/var/lib/libvirt",
                 "--shell", "/usr/sbin/nologin", ACCOUNT])  # fmt: skip

    def _write_qemu_conf(self) -> None:
        if QEMU_CONF.exists() and not QEMU_CONF.read_text().startswith(QEMU_CONF_MARK):
            raise HarnessError(f"{QEMU_CONF} exists and was not written by this suite; not touching it")
        QEMU_CONF.parent.mkdir(parents=True, exist_ok=True)
        QEMU_CONF.write_text(QEMU_SETTINGS)

    def _wait_for_daemon(self) -> None:
        deadline = time.monotonic() + 30
        while virsh("version", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise HarnessError(f"libvirtd did not answer within 30 s; see {self.state_dir / 'libvirtd.log'}")
            time.sleep(0.5)

    def _network_xml(self, name: str, cfg: Config) -> Path:
        first, last = cfg.gateway + 1, cfg.subnet.broadcast_address - 1
        dhcp = f'<dhcp><range start="{first}" end="{last}"/></dhcp>' if name == MANAGEMENT_NETWORK else ""
        path = self.state_dir / f"{name}.xml"
        path.write_text(
            f"<network><name>{name}</name>"
            f'<bridge name="{cfg.bridge}" stp="on" delay="0"/><forward mode="open"/>'
            f'<ip address="{cfg.gateway}" netmask="{cfg.subnet.netmask}">{dhcp}</ip></network>\n'
        )
        return path

    # -- stop ----------------------------------------------------------------
    def stop(self) -> None:
        pid = self.daemon_pid()
        if pid is not None:
            for domain in virsh("list", "--all", "--name", check=False).stdout.split():
                log(f"removing leftover VM {domain}")
                virsh("destroy", domain, check=False)
                virsh("undefine", domain, "--nvram", check=False)
            for name in self.networks:
                virsh("net-destroy", name, check=False)
            virsh("pool-destroy", POOL, check=False)
            log(f"stopping libvirtd (pid {pid})")
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if self._alive(pid):
                os.kill(pid, signal.SIGKILL)
        for cfg in self.networks.values():
            network.remove_nft(cfg)
        state = self._load()
        network.restore_forwarding(state.get("forwarding"))
        if QEMU_CONF.exists() and QEMU_CONF.read_text().startswith(QEMU_CONF_MARK):
            QEMU_CONF.unlink()
        shutil.rmtree(self.pool_dir, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)

    # -- state ---------------------------------------------------------------
    def daemon_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if self._alive(pid) else None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"libvirtd")
        except FileNotFoundError:
            return False

    def _load(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _save(self, state: dict) -> None:
        self.state_file.write_text(json.dumps(state))
