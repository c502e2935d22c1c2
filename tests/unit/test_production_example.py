"""inventories/production-example works as documented: the operator's secrets go in an
ansible-vault encrypted vault.yml, by the vault_* names the playbooks read."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests import ansible_cli


def ansible(command: str, *args: str):
    return ansible_cli.ansible(command, *args, timeout=300)


ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"
EXAMPLE = ANSIBLE / "inventories" / "production-example"
VAULT_EXAMPLE = EXAMPLE / "group_vars" / "all" / "vault.yml.example"


def referenced_vault_names() -> set[str]:
    sources = [ANSIBLE / "group_vars" / "all.yml", EXAMPLE / "group_vars" / "all" / "vars.yml"]
    return {name for path in sources for name in re.findall(r"\bvault_\w+", path.read_text())}


def test_the_vault_example_holds_exactly_the_secrets_the_playbooks_read():
    assert set(yaml.safe_load(VAULT_EXAMPLE.read_text())) == referenced_vault_names()


def test_the_local_stacks_generate_exactly_the_secrets_the_playbooks_map():
    generated = yaml.safe_load((ANSIBLE / "vars" / "generated_secrets.yml").read_text())
    mapped = set(re.findall(r"\bvault_\w+", (ANSIBLE / "group_vars" / "all.yml").read_text()))
    assert {name for name in generated if name.startswith("vault_")} == mapped


def test_no_secret_in_clear_in_the_example_inventory():
    for path in EXAMPLE.rglob("*"):
        if path.is_file() and path != VAULT_EXAMPLE:
            assert "vault_" not in path.read_text() or "{{ vault_" in path.read_text(), path
            assert not re.search(r"(?i)password:\s*[^\s{]", path.read_text()), path


@pytest.fixture
def encrypted_copy(tmp_path) -> tuple[Path, Path]:
    """The example as an operator sets it up: vault.yml from the example, encrypted."""
    inventory = tmp_path / "production"
    shutil.copytree(EXAMPLE, inventory)
    vault = inventory / "group_vars" / "all" / "vault.yml"
    shutil.copy(VAULT_EXAMPLE, vault)
    password = tmp_path / "vault-pass"
    password.write_text("correct horse battery staple\n")
    password.chmod(0o600)
    result = ansible("ansible-vault", "encrypt", "--vault-password-file", str(password), str(vault))
    assert result.returncode == 0, result.stderr
    assert vault.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    return inventory, password


def test_the_encrypted_inventory_resolves_every_secret(encrypted_copy):
    inventory, password = encrypted_copy
    listing = ansible("ansible-inventory", "-i", str(inventory), "--vault-password-file", str(password), "--list")
    assert listing.returncode == 0, listing.stderr
    groups = json.loads(listing.stdout)
    for group in ("lb", "http", "ws", "redis", "db", "monitoring"):
        assert groups[group]["hosts"], group
    shown = ansible(
        "ansible", "-i", str(inventory), "--vault-password-file", str(password), "--playbook-dir", ".",
        "redis1.example.internal", "-c", "local", "-m", "ansible.builtin.debug",
        "-a", "msg={{ [redis_password, postgresql_app_password, app_secret_key, nginx_tls_key[:27],"
              " blueprint_server_name] | join(' ') }}",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    # The inventory's settings win over the playbook's group_vars (which once set the server name
    # to channels.localdomain over the example's, as playbook group_vars/all outrank an inventory's).
    assert (
        "change-me-redis change-me-postgresql change-me-a-long-random-django-secret-key -----BEGIN PRIVATE KEY-----"
        " channels.example.org" in " ".join(shown.stdout.split())
    )


def test_site_yml_parses_against_the_example(encrypted_copy):
    inventory, password = encrypted_copy
    result = ansible(
        "ansible-playbook", "-i", str(inventory), "--vault-password-file", str(password), "--syntax-check", "site.yml"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_the_vault_password_nothing_runs(encrypted_copy):
    inventory, _ = encrypted_copy
    result = ansible("ansible-inventory", "-i", str(inventory), "--list")
    assert result.returncode != 0
    assert "vault" in (result.stdout + result.stderr).lower()
