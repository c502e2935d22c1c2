"""Kernel settings the harness raises while its stack runs; ``down`` puts each one back."""

from __future__ import annotations

from pathlib import Path

INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
# inotify instances one booted replica host holds: its systemd, logind, dbus and journald,
# all as root, since the containers share the machine's user ids (a converged ten-host
# stack held 110); with headroom.
INOTIFY_INSTANCES_PER_HOST = 16


def raise_to(path: Path, value: int) -> str:
    """Raise the setting at path to at least value; returns the value before, for restore."""
    previous = path.read_text().strip()
    if int(previous) < value:
        path.write_text(f"{value}\n")
    return previous


def restore(path: Path, previous: str | None) -> None:
    if previous is not None and previous != path.read_text().strip():
        path.write_text(previous + "\n")


# The kernel's default, left to the machine's own services.
INOTIFY_INSTANCES_DEFAULT = 128


def inotify_instances_needed(hosts: int) -> int:
    """The per-user limit a stack of hosts needs beside the machine's own services."""
    return INOTIFY_INSTANCES_DEFAULT + hosts * INOTIFY_INSTANCES_PER_HOST
