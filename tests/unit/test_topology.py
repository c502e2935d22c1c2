import ipaddress

import pytest

from replicas import topology
from replicas.topology import GROUPS, TopologyError

SUBNET = ipaddress.ip_network("10.77.0.0/24")


def test_scaled_topology_is_the_documented_one():
    topo = topology.load("scaled")
    assert [h.name for h in topo.hosts] == [
        "lb1",
        "http1",
        "http2",
        "ws1",
        "ws2",
        "redis1",
        "redis2",
        "redis3",
        "db1",
        "mon1",
    ]
    assert [h.name for h in topo.group("redis")] == ["redis1", "redis2", "redis3"]
    assert [h.name for h in topo.group("ws")] == ["ws1", "ws2"]
    assert len({h.address(SUBNET) for h in topo.hosts}) == len(topo.hosts)


def test_all_in_one_has_every_group_on_one_host():
    topo = topology.load("all-in-one")
    assert len(topo.hosts) == 1
    assert set(topo.hosts[0].groups) == set(GROUPS)


def test_addresses_follow_the_subnet():
    host = topology.load("scaled").host("ws2")
    assert str(host.address(SUBNET)) == "10.77.0.32"
    assert str(host.address(ipaddress.ip_network("192.168.56.0/24"))) == "192.168.56.32"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hosts: {}", "non-empty 'hosts'"),
        ("hosts: {a: {index: 2, groups: [lb, http, ws, redis, db]}}", "no host in groups ['monitoring']"),
        ("hosts: {a: {index: 2, groups: [nope]}}", "must be a non-empty subset"),
        ("hosts: {a: {index: x, groups: [lb]}}", "'index' must be an integer"),
        ("hosts: {a: {index: 2, groups: [lb]}, b: {index: 2, groups: [db]}}", "share index 2"),
        ("hosts: {averyveryverylongname: {index: 2, groups: [lb]}}", "at most 11 characters"),
        ("hosts: {a: {index: 2, groups: [lb], vars: [redis_shard]}}", "'vars' must be a mapping"),
    ],
)
def test_bad_topologies_are_refused_with_a_reason(text, message):
    with pytest.raises(TopologyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        topology.parse(text)


def test_hosts_must_fit_the_subnet():
    topo = topology.parse("hosts: {a: {index: 20, groups: [lb, http, ws, redis, db, monitoring]}}")
    topo.check_fits(SUBNET)
    with pytest.raises(TopologyError, match="does not fit"):
        topo.check_fits(ipaddress.ip_network("10.0.0.0/28"))


def test_unknown_topology_lists_the_known_ones():
    with pytest.raises(TopologyError, match="all-in-one, scaled, sharded"):
        topology.load("nope")


def test_the_defaults_file_is_not_a_topology_and_names_one():
    with pytest.raises(topology.TopologyError, match="defaults"):
        topology.load("defaults")
    assert topology.load(topology.DEFAULTS["topology"]).hosts
    assert topology.chosen({}) == topology.DEFAULTS["topology"]
    assert topology.chosen({"CHANNELS_TOPOLOGY": "all-in-one"}) == "all-in-one"


def test_the_sharded_topology_gives_two_shards_of_two_redis_hosts():
    topo = topology.load("sharded")
    shards = {h.name: h.vars["redis_shard"] for h in topo.group("redis")}
    assert shards == {"redis1": 0, "redis2": 0, "redis3": 1, "redis4": 1}
