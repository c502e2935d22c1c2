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


APP = {
    "app_secret_key": "k" * 50,
    "app_database_url": "postgres://app@db/app",
    "app_redis_sentinels": ["10.0.0.1:26379"],
    "app_allowed_hosts": ["example.com"],
}


@pytest.mark.parametrize(
    ("fallbacks", "passes"),
    [
        ([], True),
        (["Old0Key1" * 6], True),
        (["Old0Key1" * 6, "x" * 32], True),
        (["too-short"], False),
        (["a,b" + "c" * 40], False),  # DJANGO_SECRET_KEY_FALLBACKS is comma-separated
        (["it's" + "c" * 40], False),  # the env file quotes values with '
        (["with space" + "c" * 40], False),
    ],
)
def test_secret_key_fallbacks_must_be_keys_the_env_file_can_carry(tmp_path, fallbacks, passes):
    passed, output = preflight(tmp_path, "app", {**APP, "app_secret_key_fallbacks": fallbacks})
    assert passed is passes, output[-2000:]


REDIS = {
    "redis_password": "r" * 32,
    "redis_sentinel_password": "s" * 32,
    "redis_sentinel_password_previous": [],
    "redis_group": "all",
    "redis_shards": {"localhost": 0},
}


@pytest.mark.parametrize(
    ("values", "passes"),
    [
        ({}, True),
        ({"redis_password_previous": ["OldRedis0Password1"], "redis_sentinel_password_previous": ["x" * 16]}, True),
        ({"redis_password_previous": ["short"]}, False),
        ({"redis_sentinel_password_previous": ["with space" + "c" * 16]}, False),
        ({"redis_password": 'say"hello"' + "c" * 16}, False),  # redis-cli's input quotes with "
        ({"redis_sentinel_password": "it's" + "c" * 16}, False),  # the env file quotes with '
        ({"redis_password_previous": ["back\\slash" + "c" * 16]}, False),
    ],
)
def test_redis_passwords_current_and_previous_must_be_ones_every_file_can_carry(tmp_path, values, passes):
    passed, output = preflight(tmp_path, "redis", {**REDIS, **values})
    assert passed is passes, output[-2000:]
    if not passes:
        assert "without spaces, quotes or backslashes" in output


@pytest.mark.parametrize(("shard", "passes"), [(0, True), (1, False)])
def test_redis_shards_are_numbered_from_0_without_gaps(tmp_path, shard, passes):
    passed, output = preflight(tmp_path, "redis", {**REDIS, "redis_shards": {"localhost": shard}})
    assert passed is passes, output[-2000:]
    if not passes:
        assert "serve shards 1 (redis_shard): shards are numbered from 0 without gaps" in output
