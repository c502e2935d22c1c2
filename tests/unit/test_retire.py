"""retire.yml's check: only pool hosts, and never a pool's last host (it stops before touching any)."""

from __future__ import annotations

import pytest
import yaml

from tests.ansible_cli import ansible_playbook

HOSTS = {
    "lb": ["lb1"],
    "http": ["http1", "http2"],
    "ws": ["ws1"],
    "redis": ["redis1"],
    "db": ["db1"],
    "monitoring": ["lb1"],
}


@pytest.mark.parametrize(
    "retire",
    ["", "redis1", "ws1", "lb1", "nosuch"],
    ids=["nothing", "a redis host", "the last ws host", "a load balancer", "a host not in the inventory"],
)
def test_retire_refuses_what_is_not_a_pool_host_it_can_spare(tmp_path, retire):
    inventory = {
        "all": {
            "vars": {"ansible_connection": "local"},
            "children": {group: {"hosts": dict.fromkeys(hosts)} for group, hosts in HOSTS.items()},
        }
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    result = ansible_playbook("-i", str(tmp_path / "hosts.yml"), "retire.yml", "-e", f"retire={retire}", "--check")
    assert result.returncode != 0
    assert "leave at least one host in each pool" in result.stdout
    assert "Load balancers route" not in result.stdout
