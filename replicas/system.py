"""Thin wrappers over the host commands the harness drives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


class HarnessError(RuntimeError):
    """A failure the operator can act on; its message says what to do."""


def run(
    cmd: list[str], *, check: bool = True, capture: bool = True, input: str | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd,
        check=False,
        text=True,
        input=input,
        timeout=timeout,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip() if capture else ""
        raise HarnessError(f"`{' '.join(cmd)}` failed with exit {proc.returncode}: {detail}")
    return proc


def ip_json(*args: str) -> list[dict]:
    out = run(["ip", "-j", *args]).stdout.strip()
    return json.loads(out) if out else []


def log(message: str) -> None:
    print(f"[replicas] {message}", file=sys.stderr, flush=True)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below root, deepest first, read from /proc/mounts."""
    root_s = str(root)
    points = []
    with open("/proc/mounts") as fh:
        for line in fh:
            point = line.split()[1].replace("\\040", " ")
            if point == root_s or point.startswith(root_s + "/"):
                points.append(point)
    return sorted(set(points), key=len, reverse=True)


def umount_all(root: Path) -> None:
    for point in mounts_under(root):
        if run(["umount", point], check=False).returncode != 0:
            run(["umount", "-l", point], check=False)


def pid_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def nspawn_pids_for(directory: Path) -> list[int]:
    """systemd-nspawn processes whose root directory lies under directory: ours, alive or orphaned."""
    found = []
    prefix = str(directory) + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        cmd = pid_cmdline(int(entry))
        if not cmd or not cmd[0].endswith("systemd-nspawn"):
            continue
        for i, arg in enumerate(cmd):
            root = arg[3:] if arg.startswith("-D=") else cmd[i + 1] if arg == "-D" and i + 1 < len(cmd) else None
            if arg.startswith("--directory="):
                root = arg.split("=", 1)[1]
            if root and (root + "/").startswith(prefix):
                found.append(int(entry))
                break
    return found
