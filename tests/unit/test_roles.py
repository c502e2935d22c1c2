"""Every role documents each public variable twice, in sync: defaults (with a comment) and argument_specs.

The blueprint role states the facts several roles share (names, ports, paths):
a role that serves one of them takes it as a required input, with no default
of its own, so the value has one owner.
"""

from pathlib import Path

import pytest
import yaml

ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"
ROLES = sorted(p for p in (ANSIBLE / "roles").iterdir() if p.is_dir())
NAMES = [role.name for role in ROLES]


def defaults_of(role: Path) -> dict:
    return yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}


def specs_of(role: Path) -> dict:
    entry_points = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    return {name: spec for entry in entry_points.values() for name, spec in entry["options"].items()}


def wired() -> set[str]:
    """Variables set for the roles outside their own defaults: the blueprint role, the vars files,
    the playbook's group_vars and site.yml's role parameters."""
    names = set(defaults_of(ANSIBLE / "roles" / "blueprint"))
    for path in [*(ANSIBLE / "vars").glob("*.yml"), ANSIBLE / "group_vars" / "all.yml"]:
        names |= set(yaml.safe_load(path.read_text()) or {})
    for play in yaml.safe_load((ANSIBLE / "site.yml").read_text()):
        for role in play.get("roles", []):
            names |= set(role) - {"role", "tags"}
    return names


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_argument_specs_keys_equal_defaults_keys(role):
    defaults, specs = defaults_of(role), specs_of(role)
    if role.name == "blueprint":
        # Its own names are documented; the others are inputs of the roles that serve them.
        assert {name for name in defaults if name.startswith("blueprint_")} == set(specs)
        return
    # Inputs a role takes from another role's facts have a spec but no default.
    fact_inputs = {"redis_current_master"}
    assert set(defaults) <= set(specs)
    for name in set(specs) - set(defaults) - fact_inputs:
        assert specs[name].get("required"), f"{role.name}: {name} has no default, so it must be required"
        assert name in wired(), f"{role.name}: {name} has no default and nothing sets it"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_default_has_a_comment_above_it(role):
    lines = (role / "defaults" / "main.yml").read_text().splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith((" ", "#", "-", "---")) and ":" in line:
            above = lines[number - 1]
            assert above.startswith("#") or lines[number - 2].startswith("#"), f"{role.name}: {line}"


def misnamed(role: str, names) -> list[str]:
    """Names a role may not define: without its prefix, or in another role's namespace (a longer
    role name sharing its prefix: redis_sentinel_ is not the redis role's)."""
    others = tuple(f"{name}_" for name in NAMES if name != role and name.startswith(f"{role}_"))
    return [name for name in names if not name.startswith(f"{role}_") or (others and name.startswith(others))]


@pytest.mark.parametrize("role", [r for r in ROLES if r.name != "blueprint"], ids=lambda p: p.name)
def test_public_variables_carry_the_role_prefix(role):
    assert misnamed(role.name, defaults_of(role)) == []


def test_the_blueprint_role_states_only_its_own_facts_and_other_roles_inputs():
    blueprint = ANSIBLE / "roles" / "blueprint"
    defaults = defaults_of(blueprint)
    inputs = {name for role in ROLES if role != blueprint for name in specs_of(role)}
    computed_from = " ".join(str(value) for value in defaults.values())
    for name in defaults:
        if name.startswith("blueprint_"):
            continue
        # An input of the role that serves it, or a term of one of the blueprint's own values.
        assert name in inputs or name in computed_from, name
        assert any(name.startswith(f"{role}_") for role in NAMES if role != "blueprint"), name
        owner = next(role for role in ROLES if role != blueprint and name in specs_of(role)) if name in inputs else None
        if owner is not None:
            assert name not in defaults_of(owner), f"{name}: stated by both blueprint and {owner.name}"


def test_the_prefix_check_catches_a_role_defining_another_roles_variable():
    """The redis role once defined redis_sentinel_port and redis_sentinel_password."""
    names = ["redis_port", "redis_sentinel_port", "sentinel_port"]
    assert misnamed("redis", names) == ["redis_sentinel_port", "sentinel_port"]
    assert misnamed("redis_sentinel", ["redis_sentinel_port", "redis_port"]) == ["redis_port"]
