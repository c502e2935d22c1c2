"""Fixtures shared by the fast checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ansible_cli import ansible_playbook


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> Path:
    """The config templates rendered as the roles would (tests/render/render.yml)."""
    out = tmp_path_factory.mktemp("rendered")
    result = ansible_playbook("-i", "localhost,", "../tests/render/render.yml", "-e", f"render_dir={out}", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return out
