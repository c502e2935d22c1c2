"""Vagrant's VMs on this machine: the replicas' peer for the slow VM suite.

QEMU runs only under software emulation here and systemd is not PID 1, so the
suite builds its own Debian 12 libvirt box (``box``) and runs libvirtd by hand
(``libvirt``), with the replicas' safety rules (docs/architecture.md). What the
rest of the project uses is here:

- ``STATE_DIR`` and ``ENV``: the VM suite's state folder and its settings for the
  Vagrantfile (see its header) and the blueprint tests;
- ``ensure_box`` / ``ensure_added``: the box, built once per recipe and added to Vagrant;
- ``daemon()``: the suite's libvirtd, to ``start``, ``stop`` or ask for its ``daemon_pid``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from replicas.config import from_env

from .box import BOX_NAME, ensure_added, ensure_box
from .libvirt import POOL, Libvirt

__all__ = ["BOX_NAME", "ENV", "STATE_DIR", "daemon", "ensure_added", "ensure_box"]

STATE_DIR = Path(__file__).resolve().parent.parent / ".vagrant-suite"
# The VM tests' settings for the Vagrantfile (see its header) and the blueprint tests.
ENV = {
    "CHANNELS_TOPOLOGY": "all-in-one",
    "BLUEPRINT_STACK": "vagrant",
    "CHANNELS_SUBNET": "10.78.0.0/24",  # not the container replicas' network
    "CHANNELS_LIBVIRT_DRIVER": "qemu",
    "CHANNELS_LIBVIRT_POOL": POOL,
    "CHANNELS_MEMORY_DB": "2048",  # everything on one VM
    "CHANNELS_GRAFANA_INSTALL": "false",  # Grafana's repository is out of reach here
    "CHANNELS_ANSIBLE_EXTRA_VARS": "vars/local_stacks.yml",
    "VAGRANT_DEFAULT_PROVIDER": "libvirt",
    "VAGRANT_DOTFILE_PATH": str(STATE_DIR / "dot"),
}


def daemon() -> Libvirt:
    """The VM suite's libvirtd, its networks on ENV's private subnet."""
    return Libvirt(STATE_DIR, ipaddress.ip_network(ENV["CHANNELS_SUBNET"]), from_env())
