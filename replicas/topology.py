"""The topology: which hosts exist, their groups and their addresses.

The YAML files in ``topologies/`` are the single source of truth for hosts,
groups and address indexes; the replica harness and the Vagrantfile both
read them.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TOPOLOGY_DIR = Path(__file__).resolve().parent.parent / "topologies"
# What the local stacks take when nothing says otherwise (the Vagrantfile reads it too).
DEFAULTS_FILE = TOPOLOGY_DIR / "defaults.yml"
DEFAULTS = yaml.safe_load(DEFAULTS_FILE.read_text())
# Inventory groups; a host may belong to several.
GROUPS = tuple(DEFAULTS["groups"])
# The environment variable naming the topology (the Vagrantfile's too).
TOPOLOGY_ENV = "CHANNELS_TOPOLOGY"


def chosen(env: os._Environ[str] | dict[str, str] = os.environ) -> str:
    """The topology the local stacks use: CHANNELS_TOPOLOGY, else the default."""
    return env.get(TOPOLOGY_ENV) or DEFAULTS["topology"]


class TopologyError(ValueError):
    """The topology file does not describe a usable set of hosts."""


@dataclass(frozen=True)
class Host:
    name: str
    index: int
    groups: tuple[str, ...]
    # The host's own inventory variables (a redis host's redis_shard, say).
    vars: dict = field(default_factory=dict, hash=False)

    def address(self, subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
        return subnet.network_address + self.index


@dataclass(frozen=True)
class Topology:
    name: str
    hosts: tuple[Host, ...]

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts)
        raise TopologyError(f"no host {name!r} in topology {self.name!r} (hosts: {known})")

    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def group(self, group: str) -> list[Host]:
        return [h for h in self.hosts if group in h.groups]

    def check_fits(self, subnet: ipaddress.IPv4Network) -> None:
        """Every host address must be a usable address of the subnet, not the gateway."""
        usable = subnet.num_addresses - 2
        for host in self.hosts:
            if not 2 <= host.index <= usable:
                raise TopologyError(
                    f"host {host.name}: index {host.index} does not fit subnet {subnet} (2..{usable}; .1 is the bridge)"
                )


def _parse(data: object, source: str) -> Topology:
    if not isinstance(data, dict) or not isinstance(data.get("hosts"), dict) or not data["hosts"]:
        raise TopologyError(f"{source}: expected a mapping with a non-empty 'hosts' mapping")
    name = str(data.get("name") or Path(source).stem)
    hosts = []
    seen_index: dict[int, str] = {}
    for host_name, spec in data["hosts"].items():
        if not isinstance(spec, dict):
            raise TopologyError(f"{source}: host {host_name}: expected a mapping")
        index = spec.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise TopologyError(f"{source}: host {host_name}: 'index' must be an integer")
        if index in seen_index:
            raise TopologyError(f"{source}: hosts {seen_index[index]} and {host_name} share index {index}")
        seen_index[index] = host_name
        groups = spec.get("groups") or []
        unknown = sorted(set(groups) - set(GROUPS))
        if unknown or not groups:
            raise TopologyError(f"{source}: host {host_name}: groups {groups} must be a non-empty subset of {GROUPS}")
        if not str(host_name).replace("-", "").isalnum() or len(str(host_name)) > 11:
            # nspawn names the host side of the veth "vb-<name>", at most 15 characters.
            raise TopologyError(f"{source}: host name {host_name!r} must be alphanumeric, at most 11 characters")
        host_vars = spec.get("vars") or {}
        if not isinstance(host_vars, dict):
            raise TopologyError(f"{source}: host {host_name}: 'vars' must be a mapping of inventory variables")
        hosts.append(Host(name=str(host_name), index=index, groups=tuple(groups), vars=host_vars))
    missing = [g for g in GROUPS if not any(g in h.groups for h in hosts)]
    if missing:
        raise TopologyError(f"{source}: no host in groups {missing}")
    return Topology(name=name, hosts=tuple(hosts))


def load(name_or_path: str) -> Topology:
    """Load a topology by name (``scaled``) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.stem == DEFAULTS_FILE.stem and not path.suffix:
        raise TopologyError(f"{DEFAULTS_FILE.name} holds the local stacks' defaults, not a topology")
    if not path.suffix:
        path = TOPOLOGY_DIR / f"{name_or_path}.yml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in TOPOLOGY_DIR.glob("*.yml") if p != DEFAULTS_FILE))
        raise TopologyError(f"no topology {name_or_path!r} (available: {available})")
    return _parse(yaml.safe_load(path.read_text()), str(path))


def parse(text: str, source: str = "<string>") -> Topology:
    return _parse(yaml.safe_load(text), source)
