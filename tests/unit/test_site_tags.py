"""site.yml run by one tier's tag (`--tags lb`, as the runbooks and the limits tests do) still
checks every role's arguments (Ansible tags that check `always`): the values site.yml passes the
redis roles must resolve without the facts of the tasks the tag skipped."""

from __future__ import annotations

import json

import yaml

from tests.ansible_cli import ROOT, ansible_playbook

ANSIBLE = ROOT / "ansible"


def test_the_channel_layer_plays_arguments_resolve_when_another_tier_runs(tmp_path):
    plays = yaml.safe_load((ANSIBLE / "site.yml").read_text())
    play = next(p for p in plays if "redis" in [r["role"] for r in p.get("roles", [])])
    vars_files = [str(ANSIBLE / path) for path in play.get("vars_files", [])]
    (tmp_path / "play.yml").write_text(yaml.safe_dump([{**play, "gather_facts": False, "vars_files": vars_files}]))
    inventory = {
        "all": {
            "vars": {"ansible_connection": "local"},
            "children": {
                "redis": {
                    "hosts": {
                        "redis1": {"redis_shard": 0, "blueprint_private_address": "10.9.0.41"},
                        "redis2": {"redis_shard": 1, "blueprint_private_address": "10.9.0.42"},
                    }
                }
            },
        }
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    values = {name: "x" * 32 for name in ("redis_password", "redis_sentinel_password")}
    values |= {"redis_password_previous": [], "redis_sentinel_password_previous": []}
    (tmp_path / "values.json").write_text(json.dumps(values))
    result = ansible_playbook(
        "-i",
        str(tmp_path / "hosts.yml"),
        str(tmp_path / "play.yml"),
        "--tags",
        "lb",
        "-e",
        f"@{tmp_path / 'values.json'}",
        env={"ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles")},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Validating arguments against arg spec 'main' - Redis Sentinel" in output
