"""A role's preflight refuses values that would do harm before any task changes a host."""

from __future__ import annotations

import json

import pytest

from tests.ansible_cli import ROOT, ansible_playbook


def preflight(tmp_path, role: str, values: dict) -> tuple[bool, str]:
    """Run only `role`'s tasks/preflight.yml on localhost with `values`: (passed, output)."""
    play = tmp_path / "preflight.yml"
    play.write_text(
        json.dumps(
            [
                {
                    "name": f"{role}'s preflight",
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "ansible.builtin.include_role": {
                                "name": str(ROOT / "ansible/roles" / role),
                                "tasks_from": "preflight.yml",
                            },
                            "vars": values,
                        }
                    ],
                }
            ]
        )
    )
    result = ansible_playbook("-i", "localhost,", str(play), timeout=120)
    return result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("keep", "max_age_hours", "passes"),
    [(7, 26, True), (1, 1, True), (0, 26, False), (7, 0, False)],
)
def test_backup_retention_must_keep_the_newest_dump(tmp_path, keep, max_age_hours, passes):
    # head -n -0 lists every dump: a retention of 0 would delete the one just taken.
    values = {"postgresql_backup_keep": keep, "postgresql_backup_max_age_hours": max_age_hours}
    passed, output = preflight(tmp_path, "postgresql_backup", values)
    assert passed is passes, output[-2000:]
    if not passes:
        assert "postgresql_backup_keep must be at least 1" in output
