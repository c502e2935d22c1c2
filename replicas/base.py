"""The Debian 12 base image every replica's overlay sits on.

Built once with debootstrap and cached under a name derived from its recipe:
change the recipe (packages, suite, mirror, setup script) and the next ``up``
builds a new one and drops the old.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import time
from pathlib import Path

from .config import Config
from .system import HarnessError, log, run

SUITE = "bookworm"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "python3",
    "sudo",
    "ca-certificates",
    "iproute2",
    "procps",
    "iputils-ping",
    "netbase",
    "less",
)
# The account Ansible logs in as, with passwordless sudo, as on a cloud image.
ADMIN_USER = "admin"

# Shell for a new root: no host keys and no machine id, so that each host
# made from it gets its own.
NO_IDENTITY = """rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id"""


def sudo_user(user: str) -> str:
    """Shell for a new root: an account with passwordless sudo, as on a cloud image."""
    return f"""useradd --create-home --shell /bin/bash --groups sudo {user}
echo '{user} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-{user}
chmod 0440 /etc/sudoers.d/90-{user}"""


# Runs inside the new root (chroot) once, after debootstrap.
SETUP_SCRIPT = f"""
set -eu
# Host keys and machine id are per host: the harness makes them for each replica.
{NO_IDENTITY}
systemctl enable systemd-networkd.service
{sudo_user(ADMIN_USER)}
cat > /etc/apt/sources.list <<SRC
deb @MIRROR@ {SUITE} main
deb @MIRROR@ {SUITE}-updates main
deb http://deb.debian.org/debian-security {SUITE}-security main
SRC
# Keep .deb files so the harness can share them between replicas and runs.
echo 'APT::Keep-Downloaded-Packages "true";' > /etc/apt/apt.conf.d/90keep-debs
echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >> /etc/apt/apt.conf.d/90keep-debs
apt-get clean
"""


def debootstrap(cfg: Config, target: Path, packages: tuple[str, ...], *options: str) -> None:
    """A minimal Debian SUITE with these packages into target, from the configured mirror."""
    proc = run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            *options,
            SUITE,
            str(target),
            cfg.mirror,
        ],
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise HarnessError(f"debootstrap failed (exit {proc.returncode}):\n{tail}")


def recipe(cfg: Config) -> str:
    return "\n".join([SUITE, cfg.mirror, " ".join(PACKAGES), SETUP_SCRIPT])


def recipe_id(cfg: Config) -> str:
    return hashlib.sha256(recipe(cfg).encode()).hexdigest()[:12]


def base_dir(cfg: Config) -> Path:
    return cfg.cache_dir / f"base-{recipe_id(cfg)}"


def ensure_base(cfg: Config) -> tuple[Path, float | None]:
    """The base root filesystem, building it if needed; returns (path, seconds spent building)."""
    target = base_dir(cfg)
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.cache_dir / ".base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").is_file():
            return target, None
        started = time.monotonic()
        building = target.with_name(target.name + ".building")
        if building.exists():
            shutil.rmtree(building)
        log(f"building base image {target.name} with debootstrap ({SUITE}); this is done once")
        debootstrap(cfg, building, PACKAGES)
        run(["chroot", str(building), "/bin/sh", "-c", SETUP_SCRIPT.replace("@MIRROR@", cfg.mirror)])
        (building / ".complete").write_text(recipe(cfg))
        building.rename(target)
        in_use = Path("/proc/mounts").read_text()
        for old in cfg.cache_dir.glob("base-*"):
            if old != target and not old.name.endswith(".building") and str(old) not in in_use:
                log(f"removing outdated base image {old.name}")
                shutil.rmtree(old, ignore_errors=True)
        return target, time.monotonic() - started
