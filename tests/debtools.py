"""Debian packages unpacked (never installed, never started) for the fast checks' tools.

`unpacked("prometheus")` downloads the candidate .deb from the configured apt
mirror into the harness cache and extracts it there once; later runs reuse it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from replicas.config import from_env


def unpacked(*packages: str) -> Path:
    """The root of a tree holding the files of these packages."""
    tree = from_env().cache_dir / "tools" / "-".join(packages)
    if (tree / ".complete").exists():
        return tree
    staging = tree.with_name(tree.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    run = {"capture_output": True, "text": True, "check": False, "timeout": 600}
    download = subprocess.run(["apt-get", "download", *packages], cwd=staging, **run)
    if download.returncode != 0:
        raise RuntimeError(f"apt-get download {' '.join(packages)}: {download.stderr}")
    for deb in staging.glob("*.deb"):
        extract = subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], **run)
        if extract.returncode != 0:
            raise RuntimeError(f"dpkg-deb -x {deb.name}: {extract.stderr}")
        deb.unlink()
    (staging / ".complete").touch()
    shutil.rmtree(tree, ignore_errors=True)
    staging.rename(tree)
    return tree
