"""A cgroup of its own for every replica.

Without systemd on the host, every systemd-nspawn started from one shell sits
in the same cgroup, and each container's systemd takes that cgroup as its
root: ten containers would then share one tree, race on creating units
(seen: systemd-remount-fs failing with status 219/CGROUP) and could kill each
other's same-named services. So each replica is moved, before nspawn starts,
into ``channels-replicas-<bridge>/<host>`` in every hierarchy systemd uses:
the named ``systemd`` v1 hierarchy and cgroup2, whichever this host mounts.
"""

from __future__ import annotations

import os
from pathlib import Path


def hierarchies(mounts_file: str = "/proc/mounts") -> list[Path]:
    found = []
    with open(mounts_file) as fh:
        for line in fh:
            _dev, point, fstype, options = line.split()[:4]
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
                found.append(Path(point))
    return found


def replica_dirs(parent: str, name: str, boot: str) -> list[Path]:
    return [h / parent / name / boot for h in hierarchies()]


def prepare(parent: str, name: str, boot: str) -> list[Path]:
    """A new cgroup per boot: a killed predecessor's cgroup may not be empty yet."""
    dirs = replica_dirs(parent, name, boot)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def enter(dirs: list[Path]) -> None:
    """Move the calling process into dirs (run in the child before exec)."""
    for d in dirs:
        with open(d / "cgroup.procs", "w") as fh:
            fh.write("0")


def remove(parent: str, name: str | None = None) -> None:
    """Remove a replica's cgroups (or all of this harness's), deepest first; busy ones stay."""
    for h in hierarchies():
        top = h / parent / name if name else h / parent
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
