"""The harness's bridge, its nftables table and the clash checks that guard them.

Safety rules (docs/architecture.md, "Local replicas and VMs"): one bridge and one subnet of our own, refused when
anything else uses them; containers reach the outside only through a
masquerade limited to their subnet and to the ports package installs need;
``down`` removes all of it.
"""

from __future__ import annotations

import ipaddress

from . import sysctl
from .config import Config
from .system import HarnessError, ip_json, log, run

# Outbound ports the containers may use through the masquerade: DNS, and
# HTTP(S) for the Debian mirror and PyPI. Nothing else leaves the bridge.
EGRESS_TCP_PORTS = (53, 80, 443)
EGRESS_UDP_PORTS = (53,)


def find_clashes(cfg: Config, links: list[dict], addrs: list[dict], routes: list[dict]) -> list[str]:
    """What on this host already uses our bridge name or subnet (pure, for tests)."""
    problems = []
    ours = next((link for link in links if link.get("ifname") == cfg.bridge), None)
    if ours is not None and ours.get("ifalias") != cfg.bridge_alias:
        problems.append(
            f"interface {cfg.bridge} exists and was not made by the harness (set REPLICAS_BRIDGE to another name)"
        )
    for iface in addrs:
        if iface.get("ifname") == cfg.bridge and ours is not None and ours.get("ifalias") == cfg.bridge_alias:
            continue
        for info in iface.get("addr_info", []):
            if info.get("family") != "inet":
                continue
            net = ipaddress.ip_network(f"{info['local']}/{info.get('prefixlen', 32)}", strict=False)
            if net.overlaps(cfg.subnet):
                problems.append(
                    f"subnet {cfg.subnet} overlaps {info['local']}/{info.get('prefixlen')} on "
                    f"{iface.get('ifname')} (set REPLICAS_SUBNET to a free network)"
                )
    for route in routes:
        dst = route.get("dst")
        if not dst or dst == "default" or route.get("dev") == cfg.bridge:
            continue
        if ipaddress.ip_network(dst, strict=False).overlaps(cfg.subnet):
            problems.append(
                f"subnet {cfg.subnet} overlaps route {dst} via {route.get('dev')} "
                f"(set REPLICAS_SUBNET to a free network)"
            )
    return problems


def check_no_clash(cfg: Config) -> None:
    problems = find_clashes(
        cfg, ip_json("link", "show"), ip_json("addr", "show"), ip_json("route", "show", "table", "all")
    )
    if problems:
        raise HarnessError("refusing to start:\n  - " + "\n  - ".join(problems))


def bridge_exists(cfg: Config) -> bool:
    return any(link.get("ifname") == cfg.bridge for link in ip_json("link", "show"))


def ensure_bridge(cfg: Config) -> None:
    if not bridge_exists(cfg):
        log(f"creating bridge {cfg.bridge} with {cfg.gateway}/{cfg.subnet.prefixlen}")
        run(["ip", "link", "add", cfg.bridge, "type", "bridge"])
        run(["ip", "link", "set", cfg.bridge, "alias", cfg.bridge_alias])
    if str(cfg.gateway) not in _bridge_addresses(cfg):
        run(["ip", "addr", "add", f"{cfg.gateway}/{cfg.subnet.prefixlen}", "dev", cfg.bridge])
    run(["ip", "link", "set", cfg.bridge, "up"])


def client_addresses(cfg: Config, count: int, taken: set) -> list[ipaddress.IPv4Address]:
    """Source addresses for a load client: the top of our subnet, none the gateway's or a host's (pure).

    nginx limits connections per address, as it should; a load client spreads
    over several addresses instead, only on the harness's own bridge.
    """
    free = [a for a in reversed(list(cfg.subnet.hosts())) if a != cfg.gateway and a not in taken]
    if count > len(free):
        raise HarnessError(f"{cfg.subnet} has {len(free)} addresses left for a load client, not {count}")
    return free[:count]


def _bridge_addresses(cfg: Config) -> set[str]:
    return {
        a["local"]
        for i in ip_json("addr", "show", "dev", cfg.bridge)
        for a in i.get("addr_info", [])
        if a.get("family") == "inet"
    }


def add_addresses(cfg: Config, addresses: list[ipaddress.IPv4Address]) -> None:
    """Put `addresses` on our bridge (as /32: the subnet's route stays the gateway's); gone with the bridge."""
    links = [link for link in ip_json("link", "show") if link.get("ifname") == cfg.bridge]
    if not links or links[0].get("ifalias") != cfg.bridge_alias:
        raise HarnessError(f"bridge {cfg.bridge} is not up, or not the harness's: no address added")
    have = _bridge_addresses(cfg)
    for address in addresses:
        if str(address) not in have:
            run(["ip", "addr", "add", f"{address}/32", "dev", cfg.bridge])


def remove_addresses(cfg: Config, addresses: list[ipaddress.IPv4Address]) -> None:
    have = _bridge_addresses(cfg) if bridge_exists(cfg) else set()
    for address in addresses:
        if str(address) in have and address != cfg.gateway:
            run(["ip", "addr", "del", f"{address}/32", "dev", cfg.bridge])


def remove_bridge(cfg: Config) -> None:
    links = [link for link in ip_json("link", "show") if link.get("ifname") == cfg.bridge]
    if links and links[0].get("ifalias") == cfg.bridge_alias:
        run(["ip", "link", "del", cfg.bridge])


def nft_ruleset(cfg: Config) -> str:
    tcp = ", ".join(str(p) for p in EGRESS_TCP_PORTS)
    udp = ", ".join(str(p) for p in EGRESS_UDP_PORTS)
    return f"""
table inet {cfg.nft_table} {{
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{cfg.bridge}" oifname "{cfg.bridge}" accept
    oifname "{cfg.bridge}" ct state established,related accept
    oifname "{cfg.bridge}" drop
    iifname "{cfg.bridge}" ip saddr {cfg.subnet} tcp dport {{ {tcp} }} accept
    iifname "{cfg.bridge}" ip saddr {cfg.subnet} udp dport {{ {udp} }} accept
    iifname "{cfg.bridge}" drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {cfg.subnet} oifname != "{cfg.bridge}" masquerade
  }}
}}
"""


def nft_table_exists(cfg: Config) -> bool:
    return run(["nft", "list", "table", "inet", cfg.nft_table], check=False).returncode == 0


def ensure_nft(cfg: Config) -> None:
    # Replace the table whole so a half-written one from a killed run is mended.
    remove_nft(cfg)
    run(["nft", "-f", "-"], input=nft_ruleset(cfg))


def remove_nft(cfg: Config) -> None:
    if nft_table_exists(cfg):
        run(["nft", "delete", "table", "inet", cfg.nft_table])


def enable_forwarding() -> str:
    """Turn IPv4 forwarding on; returns the previous value so the caller can restore it."""
    return sysctl.raise_to(sysctl.IP_FORWARD, 1)


def restore_forwarding(previous: str | None) -> None:
    sysctl.restore(sysctl.IP_FORWARD, previous)
