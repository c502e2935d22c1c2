"""`up` with another topology grows or shrinks the running stack: only the hosts it adds boot,
only those it drops (or moves to another address) go, the others keep running. The machine-facing
calls are replaced; what is checked is which host gets which."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicas import config, harness, topology


@pytest.fixture
def calls(tmp_path, monkeypatch):
    done: list[tuple[str, str]] = []
    running = {"a", "b", "c"}
    monkeypatch.setattr(harness.base, "ensure_base", lambda cfg: (tmp_path / "base", None))
    monkeypatch.setattr(harness.network, "check_no_clash", lambda cfg: None)
    monkeypatch.setattr(harness.network, "ensure_bridge", lambda cfg: None)
    monkeypatch.setattr(harness.network, "ensure_nft", lambda cfg: None)
    monkeypatch.setattr(harness.sysctl, "raise_all", lambda record, wanted: None)
    monkeypatch.setattr(harness.host, "is_running", lambda pid, p: p.root.name in running)
    monkeypatch.setattr(harness.host, "is_mounted", lambda p: p.root.name in running)
    monkeypatch.setattr(harness.host, "write_hosts", lambda cfg, topo, p: done.append(("hosts", p.root.name)))
    for name in ("stop", "unmount", "harvest_apt_cache"):
        monkeypatch.setattr(harness.host, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(harness.Harness, "_ensure_key", lambda self: None)
    monkeypatch.setattr(harness.Harness, "_write_access", lambda self, topo: None)
    monkeypatch.setattr(harness.Harness, "wait_ready", lambda self, hosts: None)
    monkeypatch.setattr(harness.Harness, "memory_per_host", lambda self, topo: {})
    monkeypatch.setattr(harness.Harness, "_boot", lambda self, topo, h, base, state: done.append(("boot", h.name)))

    def remove(self, name, state):
        running.discard(name)
        done.append(("remove", name))

    monkeypatch.setattr(harness.Harness, "_remove", remove)
    return done


def write(path: Path, hosts: dict[str, int]) -> str:
    groups = ["lb", "http", "ws", "redis", "db", "monitoring"]
    lines = ["name: t", "hosts:"] + [
        f"  {name}: {{index: {index}, groups: [{', '.join(groups)}]}}" for name, index in hosts.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_another_topology_boots_what_it_adds_removes_what_it_drops_and_keeps_the_rest(tmp_path, calls):
    cfg = config.from_env({"REPLICAS_STATE_DIR": str(tmp_path / "state")})
    replicas = harness.Harness(cfg)
    recorded = {"a": {"pid": 1, "index": 11}, "b": {"pid": 2, "index": 12}, "c": {"pid": 3, "index": 13}}
    replicas.save_state(
        {"subnet": str(cfg.subnet), "bridge": cfg.bridge, "base": str(tmp_path / "base"), "hosts": recorded}
    )
    # a stays, b goes, c moves to another address, d is new.
    grown = write(tmp_path / "grown.yml", {"a": 11, "c": 14, "d": 15})
    report = replicas.up(grown)
    assert sorted(c for c in calls if c[0] == "remove") == [("remove", "b"), ("remove", "c")]
    assert [c for c in calls if c[0] == "boot"] == [("boot", "c"), ("boot", "d")]
    assert ("hosts", "a") in calls
    assert report["booted"] == ["c", "d"]
    assert replicas.load_state()["topology"] == grown
    assert topology.load(replicas.load_state()["topology"]).names() == ["a", "c", "d"]


def test_another_network_takes_the_running_stack_down_first(tmp_path, calls, monkeypatch):
    cfg = config.from_env({"REPLICAS_STATE_DIR": str(tmp_path / "state")})
    replicas = harness.Harness(cfg)
    replicas.save_state({"subnet": "10.99.0.0/24", "bridge": cfg.bridge, "base": str(tmp_path / "base"), "hosts": {}})
    downs = []
    monkeypatch.setattr(harness.Harness, "down", lambda self: downs.append(True))
    replicas.up(write(tmp_path / "t.yml", {"a": 11}))
    assert downs == [True]
