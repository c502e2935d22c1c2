"""Ansible's commands from the project's venv, run in ansible/ (so ansible.cfg applies)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def venv_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the venv's commands first on PATH (Vagrant finds ansible-playbook there)."""
    return {
        **os.environ,
        "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}",
        "ANSIBLE_FORCE_COLOR": "0",
        **(extra or {}),
    }


def ansible(
    command: str, *args: str, timeout: float = 1800, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """An Ansible command (ansible, ansible-playbook, ansible-vault, ...) and its captured output."""
    return subprocess.run(
        [command, *args],
        cwd=ROOT / "ansible",
        env=venv_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ansible_playbook(
    *args: str, timeout: float = 1800, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return ansible("ansible-playbook", *args, timeout=timeout, env=env)
