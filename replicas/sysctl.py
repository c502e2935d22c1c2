"""Kernel settings the harness raises while its stack runs; ``down`` puts each one back."""

from __future__ import annotations

import json
from pathlib import Path

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
SETTINGS = {"net.ipv4.ip_forward": IP_FORWARD, "fs.inotify.max_user_instances": INOTIFY_INSTANCES}
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


def raise_all(record: Path, wanted: dict[str, int]) -> None:
    """Raise each setting (SETTINGS' names) to at least its wanted value. The values found the
    first time are kept in record, apart from the harness's state file, so that a run killed
    while writing its state still leaves down what to put back."""
    before = json.loads(record.read_text()) if record.exists() else {}
    for name, value in wanted.items():
        before.setdefault(name, raise_to(SETTINGS[name], value))
    record.write_text(json.dumps(before) + "\n")


def restore_all(record: Path) -> None:
    """Put back every value raise_all recorded, and forget them."""
    if record.exists():
        for name, previous in json.loads(record.read_text()).items():
            restore(SETTINGS[name], previous)
        record.unlink()
