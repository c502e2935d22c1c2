import ipaddress

import pytest

from replicas import config, network
from replicas.system import HarnessError

CFG = config.from_env({"REPLICAS_SUBNET": "10.77.0.0/24", "REPLICAS_BRIDGE": "chrepl0"})


def link(name, alias=None):
    return {"ifname": name, **({"ifalias": alias} if alias else {})}


def addr(name, local, prefix):
    return {"ifname": name, "addr_info": [{"family": "inet", "local": local, "prefixlen": prefix}]}


def test_a_clean_host_has_no_clash():
    assert (
        network.find_clashes(
            CFG,
            [link("eth0")],
            [addr("eth0", "192.0.2.2", 24)],
            [{"dst": "default", "dev": "eth0"}, {"dst": "192.0.2.0/24", "dev": "eth0"}],
        )
        == []
    )


def test_our_own_bridge_from_an_earlier_run_is_no_clash():
    links = [link("eth0"), link("chrepl0", CFG.bridge_alias)]
    addrs = [addr("chrepl0", "10.77.0.1", 24)]
    routes = [{"dst": "10.77.0.0/24", "dev": "chrepl0"}]
    assert network.find_clashes(CFG, links, addrs, routes) == []


def test_a_foreign_interface_with_our_bridge_name_is_refused():
    problems = network.find_clashes(CFG, [link("chrepl0")], [], [])
    assert len(problems) == 1
    assert "was not made by the harness" in problems[0]


def test_an_overlapping_address_or_route_is_refused():
    problems = network.find_clashes(
        CFG, [link("wg0")], [addr("wg0", "10.77.0.200", 16)], [{"dst": "10.77.0.0/23", "dev": "tun0"}]
    )
    assert len(problems) == 2
    assert all("REPLICAS_SUBNET" in p for p in problems)


def test_egress_is_masquerade_for_our_subnet_and_package_ports_only():
    rules = network.nft_ruleset(CFG)
    assert 'ip saddr 10.77.0.0/24 oifname != "chrepl0" masquerade' in rules
    assert "tcp dport { 53, 80, 443 } accept" in rules
    assert "udp dport { 53 } accept" in rules
    # everything else leaving the bridge, and anything new entering it, is dropped
    assert 'iifname "chrepl0" drop' in rules
    assert 'oifname "chrepl0" drop' in rules
    assert f"table inet {CFG.nft_table}" in rules


def test_load_client_addresses_come_from_the_top_of_our_subnet_and_never_a_hosts():
    taken = {ipaddress.ip_address("10.77.0.254"), ipaddress.ip_address("10.77.0.11")}
    picked = [str(a) for a in network.client_addresses(CFG, 3, taken)]
    assert picked == ["10.77.0.253", "10.77.0.252", "10.77.0.251"]
    small = config.from_env({"REPLICAS_SUBNET": "10.77.0.0/28", "REPLICAS_BRIDGE": "chrepl0"})
    with pytest.raises(HarnessError, match="addresses left"):
        network.client_addresses(small, 14, set())
