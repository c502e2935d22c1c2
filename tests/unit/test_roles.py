"""Every role documents each public variable twice, in sync: defaults (with a comment) and argument_specs."""

from pathlib import Path

import pytest
import yaml

ROLES = sorted(p for p in (Path(__file__).resolve().parents[2] / "ansible" / "roles").iterdir() if p.is_dir())


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_keys_equal_defaults_keys(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    # Inputs a role takes from another role's facts have a spec but no default.
    fact_inputs = {"redis_current_master"}
    assert set(defaults) == set(specs) - fact_inputs


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_default_has_a_comment_above_it(role):
    lines = (role / "defaults" / "main.yml").read_text().splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith((" ", "#", "-", "---")) and ":" in line:
            above = lines[number - 1]
            assert above.startswith("#") or lines[number - 2].startswith("#"), f"{role.name}: {line}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_public_variables_carry_the_role_prefix(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    assert all(name.startswith(f"{role.name}_") for name in defaults), role.name
