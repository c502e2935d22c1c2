"""The firewall lets through the flows of docs/architecture.md and nothing else, tried from other hosts.

Each flow is tried from a host of a group allowed to use it (it connects) and
from a host of no allowed group, and from the controller (both refused).
"""

from __future__ import annotations

import socket

import pytest

from bench.pools import role_default as port_of
from tests.replicas.conftest import TOPOLOGY

# (group serving, port): groups allowed to connect. "any" = every address.
# Ports from their owner, the blueprint role's defaults.
FLOWS = {
    ("lb", port_of("blueprint", "nginx_https_port")): "any",
    ("lb", port_of("blueprint", "nginx_http_port")): "any",
    ("http", port_of("blueprint", "gunicorn_port")): {"lb", "monitoring"},
    ("ws", port_of("blueprint", "daphne_base_port")): {"lb", "monitoring"},
    ("redis", port_of("blueprint", "redis_port")): {"http", "ws", "redis", "monitoring"},
    ("redis", port_of("blueprint", "redis_sentinel_port")): {"http", "ws", "redis", "monitoring"},
    ("db", port_of("blueprint", "postgresql_port")): {"http", "ws", "monitoring"},
    # Exporters answer Prometheus only.
    ("ws", port_of("blueprint", "exporters_node_port")): {"monitoring"},
    ("lb", port_of("blueprint", "exporters_nginx_port")): {"monitoring"},
    ("redis", port_of("blueprint", "exporters_redis_port")): {"monitoring"},
    ("redis", port_of("blueprint", "exporters_sentinel_port")): {"monitoring"},
    ("db", port_of("blueprint", "exporters_postgres_port")): {"monitoring"},
}


def cases():
    """(target, port, source, allowed) for one allowed and one forbidden source per flow."""
    for (group, port), allowed in FLOWS.items():
        for target in TOPOLOGY.group(group)[:1]:
            others = [h for h in TOPOLOGY.hosts if h.name != target.name]
            if allowed == "any":
                good, bad = others[:1], []
            else:
                good = [h for h in others if allowed & set(h.groups)][:1]
                bad = [h for h in others if not allowed & set(h.groups)][:1]
            for source in good:
                yield pytest.param(target.name, port, source.name, True, id=f"{group}:{port} from {source.name}")
            for source in bad:
                yield pytest.param(target.name, port, source.name, False, id=f"{group}:{port} from {source.name}")
    # SSH only from the controller: never from another host.
    first, *rest = TOPOLOGY.hosts
    for source in rest[:1]:
        yield pytest.param(first.name, 22, source.name, False, id=f"ssh to {first.name} from {source.name}")


def connects(host, address: str, port: int) -> tuple[bool, str]:
    result = host.run("timeout 5 bash -c 'exec 3<>/dev/tcp/%s/%s' 2>&1", address, str(port))
    return result.rc == 0, result.stdout.strip()


@pytest.fixture(scope="module")
def firewalled(converged, hosts):
    for name, host in hosts.items():
        nftables = host.service("nftables")
        assert nftables.is_enabled, name
        assert nftables.is_running, name
    return hosts


@pytest.mark.parametrize(("target", "port", "source", "allowed"), list(cases()))
def test_flow_between_hosts(firewalled, stack, target, port, source, allowed):
    address = stack.address(target)
    ok, output = connects(firewalled[source], address, port)
    assert ok == allowed, f"{source} -> {target}:{port}: {output}"
    if not allowed:
        # Refused at once by the firewall's reset, not a timeout of a missing service.
        assert "Connection refused" in output


@pytest.mark.parametrize(
    ("group", "port"), [key for key, allowed in FLOWS.items() if allowed != "any" and TOPOLOGY.group(key[0])]
)
def test_the_controller_reaches_no_internal_service(firewalled, stack, group, port):
    target = stack.topology.group(group)[0]
    address = stack.address(target.name)
    # The service is up (its own host reaches it over its private address, through loopback)...
    assert connects(firewalled[target.name], address, port)[0]
    # ...and the controller, in no group, is turned away.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, port), timeout=5).close()


def test_every_host_denies_by_default(firewalled):
    for name, host in firewalled.items():
        ruleset = host.run("nft list table inet channels_blueprint").stdout
        assert "hook input priority filter; policy drop;" in ruleset, name
        assert "tcp dport 22 ip saddr" in ruleset, name
