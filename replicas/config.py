"""Where the harness keeps its state and which network it may use.

Everything is overridable through the environment so that two checkouts, or
a CI runner with another network in 10.77.0.0/24, can choose their own.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from .topology import DEFAULTS

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Config:
    subnet: ipaddress.IPv4Network
    bridge: str
    state_dir: Path
    cache_dir: Path
    inventory_path: Path
    mirror: str
    # Written into the bridge's ifalias: a bridge without it is not ours.
    bridge_alias: str = "channels-replicas"

    @property
    def nft_table(self) -> str:
        """nftables table owned by this harness instance; its name is its mark of ownership."""
        return f"channels_replicas_{self.bridge.replace('-', '_')}"

    @property
    def cgroup_parent(self) -> str:
        return f"channels-replicas-{self.bridge}"

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def ssh_key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def sysctl_record(self) -> Path:
        """The kernel settings' values before up raised them (replicas/sysctl.py)."""
        return self.state_dir / "sysctl-before.json"

    def host_dir(self, name: str) -> Path:
        return self.state_dir / "hosts" / name


def from_env(env: os._Environ[str] | dict[str, str] = os.environ) -> Config:
    subnet = ipaddress.ip_network(env.get("REPLICAS_SUBNET", DEFAULTS["subnet"]), strict=True)
    if not isinstance(subnet, ipaddress.IPv4Network) or subnet.prefixlen > 28:
        raise ValueError(f"REPLICAS_SUBNET {subnet} must be an IPv4 network of /28 or larger")
    bridge = env.get("REPLICAS_BRIDGE", "chrepl0")
    if not (1 <= len(bridge) <= 15) or not bridge.replace("-", "").isalnum():
        raise ValueError(f"REPLICAS_BRIDGE {bridge!r} is not a valid interface name")
    state_dir = Path(env.get("REPLICAS_STATE_DIR", REPO_ROOT / ".replicas")).resolve()
    return Config(
        subnet=subnet,
        bridge=bridge,
        state_dir=state_dir,
        cache_dir=Path(env.get("REPLICAS_CACHE_DIR", "/var/cache/channels-replicas")).resolve(),
        inventory_path=Path(
            env.get(
                "REPLICAS_INVENTORY",
                REPO_ROOT / "ansible" / "inventories" / "replicas" / "hosts.yml",
            )
        ).resolve(),
        mirror=env.get("REPLICAS_MIRROR", "http://deb.debian.org/debian"),
    )
