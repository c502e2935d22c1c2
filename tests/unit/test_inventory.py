import yaml

from replicas import config, inventory, topology


def test_inventory_has_every_group_and_one_address_per_host(tmp_path):
    cfg = config.from_env({"REPLICAS_STATE_DIR": str(tmp_path)})
    topo = topology.load("scaled")
    data = yaml.safe_load(inventory.render(cfg, topo))["all"]
    assert data["vars"]["ansible_become"] is True
    assert str(cfg.known_hosts) in data["vars"]["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in data["vars"]["ansible_ssh_common_args"]
    assert data["hosts"]["ws2"] == {"ansible_host": "10.77.0.32"}
    assert set(data["children"]) == set(topology.GROUPS)
    assert list(data["children"]["redis"]["hosts"]) == ["redis1", "redis2", "redis3"]
    assert list(data["children"]["monitoring"]["hosts"]) == ["mon1"]


def test_config_rejects_a_bad_subnet_or_bridge():
    import pytest

    with pytest.raises(ValueError, match="/28 or larger"):
        config.from_env({"REPLICAS_SUBNET": "10.77.0.0/30"})
    with pytest.raises(ValueError, match="not a valid interface name"):
        config.from_env({"REPLICAS_BRIDGE": "this-name-is-too-long"})


def test_a_hosts_own_variables_reach_the_inventory(tmp_path):
    cfg = config.from_env({"REPLICAS_STATE_DIR": str(tmp_path)})
    data = yaml.safe_load(inventory.render(cfg, topology.load("sharded")))["all"]
    assert data["hosts"]["redis3"] == {"ansible_host": "10.77.0.43", "redis_shard": 1}
    assert data["hosts"]["app1"] == {"ansible_host": "10.77.0.11", "daphne_asgi_server": "uvicorn"}
