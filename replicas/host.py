"""One replica: an overlay root on the base image, booted by systemd-nspawn."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import cgroups
from .base import ADMIN_USER
from .config import Config
from .system import HarnessError, ip_json, log, mounts_under, nspawn_pids_for, pid_cmdline, run, umount_all
from .topology import Host, Topology

LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass
class Paths:
    root: Path

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def merged(self) -> Path:
        return self.root / "rootfs"

    @property
    def log(self) -> Path:
        return self.root / "console.log"


def paths(cfg: Config, name: str) -> Paths:
    return Paths(cfg.host_dir(name))


def apt_cache(cfg: Config) -> Path:
    return cfg.cache_dir / "apt-archives"


def pip_cache(cfg: Config) -> Path:
    return cfg.cache_dir / "pip"


def host_nameservers() -> list[str]:
    """Nameservers the containers can reach through the masquerade (not the host's loopback stub)."""
    servers = []
    for candidate in (Path("/etc/resolv.conf"), Path("/run/systemd/resolve/resolv.conf")):
        if not candidate.is_file():
            continue
        for line in candidate.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and not parts[1].startswith("127."):
                servers.append(parts[1])
        if servers:
            return servers
    raise HarnessError("no nameserver outside 127.0.0.0/8 in /etc/resolv.conf for the replicas to use")


def is_mounted(p: Paths) -> bool:
    return str(p.merged) in mounts_under(p.merged)


def mount(cfg: Config, base: Path, p: Paths) -> bool:
    """Mount the overlay; returns True when the upper layer is new (a fresh host)."""
    fresh = not p.upper.exists()
    for d in (p.upper, p.work, p.merged):
        d.mkdir(parents=True, exist_ok=True)
    if fresh:
        seed_apt_cache(cfg, p)
    if not is_mounted(p):
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={base},upperdir={p.upper},workdir={p.work}",
                str(p.merged),
            ]
        )
    return fresh


def _archives(p: Paths) -> Path:
    return p.upper / "var/cache/apt/archives"


def seed_apt_cache(cfg: Config, p: Paths) -> None:
    """Hard-link the shared .deb cache into a new host's upper layer.

    Each replica keeps its own archive directory (apt locks it, and ten hosts
    sharing one lock would install one at a time); links cost no copy.
    """
    shared = apt_cache(cfg)
    if not shared.is_dir():
        return
    dest = _archives(p)
    dest.mkdir(parents=True, exist_ok=True)
    for deb in shared.glob("*.deb"):
        try:
            os.link(deb, dest / deb.name)
        except FileExistsError:
            continue
        except OSError:
            shutil.copy2(deb, dest / deb.name)


def harvest_apt_cache(cfg: Config, p: Paths) -> int:
    """Keep what a host downloaded for the next run; returns how many new packages."""
    shared = apt_cache(cfg)
    shared.mkdir(parents=True, exist_ok=True)
    added = 0
    for deb in _archives(p).glob("*.deb") if _archives(p).is_dir() else ():
        target = shared / deb.name
        if target.exists():
            continue
        try:
            os.link(deb, target)
        except OSError:
            shutil.copy2(deb, target)
        added += 1
    return added


def write_hosts(cfg: Config, topo: Topology, p: Paths) -> None:
    """/etc/hosts: every host of the topology by name (rewritten on a running host when the topology grows)."""
    hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    hosts += [f"{h.address(cfg.subnet)} {h.name}" for h in topo.hosts]
    (p.merged / "etc/hosts").write_text("\n".join(hosts) + "\n")


def write_config(cfg: Config, topo: Topology, host: Host, p: Paths, pubkey: str) -> None:
    """Identity, network, SSH access and trust for one host, written into its overlay."""
    root = p.merged
    address = host.address(cfg.subnet)
    (root / "etc/hostname").write_text(host.name + "\n")
    write_hosts(cfg, topo, p)
    machine_id = root / "etc/machine-id"
    if not machine_id.read_text().strip():
        machine_id.write_text(uuid.uuid4().hex + "\n")
    (root / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    # Same name as systemd's own link-local default for containers, so ours replaces it.
    (root / "etc/systemd/network/80-container-host0.network").write_text(
        "[Match]\nName=host0\n\n[Network]\n"
        f"Address={address}/{cfg.subnet.prefixlen}\nGateway={cfg.gateway}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink():
        resolv.unlink()
    resolv.write_text("".join(f"nameserver {ns}\n" for ns in host_nameservers()))
    # sshd: one host key per replica, generated here so known_hosts can be written up front.
    key = root / "etc/ssh/ssh_host_ed25519_key"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(key)])
    (root / "etc/ssh/sshd_config.d/10-replica.conf").write_text(
        "HostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\nPasswordAuthentication no\n"
    )
    admin_home = root / "home" / ADMIN_USER
    uid, gid = _ids(root, ADMIN_USER)
    for home, owner in ((root / "root", (0, 0)), (admin_home, (uid, gid))):
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(pubkey)
        for path in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(path, *owner)
        os.chmod(ssh_dir / "authorized_keys", 0o600)
    share_host_trust(root)


def host_cas() -> list[Path]:
    """The host's own extra CAs (a proxy's, a company's)."""
    return sorted(LOCAL_CA_DIR.glob("*.crt")) if LOCAL_CA_DIR.is_dir() else []


def share_host_trust(root: Path) -> None:
    """Give a root filesystem the host's trust: it reaches the same mirrors through
    the same egress. Also used for the VM tests' box."""
    if host_cas():
        dest = root / "usr/local/share/ca-certificates"
        dest.mkdir(parents=True, exist_ok=True)
        for crt in host_cas():
            shutil.copy2(crt, dest / crt.name)
        shutil.copy2(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
    # pip: the system bundle (with those CAs; pip's own ignores them) and a cache
    # (the replicas bind the shared one there).
    (root / "etc/pip.conf").write_text(
        "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\ncache-dir = /var/cache/pip\n"
    )


def _ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise HarnessError(f"user {user} missing from the base image")


def host_public_key(p: Paths) -> list[str]:
    """[key type, base64 key] of the replica's SSH host key."""
    return (p.merged / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2]


def boot(cfg: Config, host: Host, p: Paths) -> int:
    """Start systemd-nspawn in the background; returns its PID."""
    pip_cache(cfg).mkdir(parents=True, exist_ok=True)
    os.chmod(pip_cache(cfg), 0o1777)
    cmd = [
        "systemd-nspawn",
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--network-bridge={cfg.bridge}",
        f"--directory={p.merged}",
        f"--machine={host.name}",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",
        f"--bind={pip_cache(cfg)}:/var/cache/pip",
    ]
    wait_for_veth_gone(cfg, host.name)
    cgroups.remove(cfg.cgroup_parent, host.name)
    own_cgroups = cgroups.prepare(cfg.cgroup_parent, host.name, f"boot-{time.time_ns()}")
    logfile = open(p.log, "ab")
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: cgroups.enter(own_cgroups),
    )
    logfile.close()
    return proc.pid


def wait_for_veth_gone(cfg: Config, name: str, timeout: float = 5.0) -> None:
    """The host side of a killed container's veth lingers while its namespace is torn down;
    a new nspawn for the same host cannot create it until then. Only a veth on our own
    bridge is ours to remove."""
    veth = f"vb-{name}"
    deadline = time.monotonic() + timeout
    while links := [link for link in ip_json("link", "show") if link.get("ifname") == veth]:
        if links[0].get("master") != cfg.bridge:
            raise HarnessError(f"{name}: interface {veth} exists outside bridge {cfg.bridge}; not touching it")
        if time.monotonic() > deadline:
            log(f"{name}: removing the lingering {veth}")
            run(["ip", "link", "del", veth], check=False)
            return
        time.sleep(0.2)


def container_pids(p: Paths) -> list[int]:
    """Every process of this replica, its nspawn included, even when orphaned by a killed run.

    A process belongs to the replica when the root of its mount namespace is
    this replica's overlay (found by its upperdir in /proc/PID/mountinfo).
    """
    pids = set(nspawn_pids_for(p.root))
    marker = f"upperdir={p.upper},"
    own_ns = os.readlink("/proc/self/ns/mnt")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/mnt") == own_ns:
                continue
            with open(f"/proc/{entry}/mountinfo") as fh:
                for line in fh:
                    fields = line.split()
                    if fields[4] == "/":
                        if marker in line:
                            pids.add(int(entry))
                        break
        except OSError:
            continue
    return sorted(pids)


def is_running(pid: int | None, p: Paths) -> bool:
    if not pid:
        return False
    cmd = pid_cmdline(pid)
    return bool(cmd) and cmd[0].endswith("systemd-nspawn") and f"--directory={p.merged}" in cmd


def stop(p: Paths, *, kill: bool = False, timeout: float = 30.0) -> None:
    """Stop the replica: poweroff through nspawn (or SIGKILL everything for a crash drill)."""
    pids = container_pids(p)
    nspawns = [pid for pid in pids if (pid_cmdline(pid) or [""])[0].endswith("systemd-nspawn")]
    if not kill:
        for pid in nspawns:
            signal_if_alive(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(pid) for pid in container_pids(p)):
            time.sleep(0.2)
    leftover = container_pids(p)
    if leftover and not kill:
        log(f"{p.root.name}: did not power off within {timeout:.0f}s; killing {leftover}")
    for pid in leftover:
        signal_if_alive(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in leftover):
        time.sleep(0.1)


def unmount(p: Paths) -> None:
    umount_all(p.root)


def signal_if_alive(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        # Gone: no entry any more (FileNotFoundError), or reaped between the open and
        # the read (ProcessLookupError: `./stack down` died on it once).
        return False


def container_init(p: Paths) -> int | None:
    """PID (in our namespace) of the replica's systemd: the child of its nspawn."""
    for pid in nspawn_pids_for(p.root):
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:  # gone meanwhile, as in _alive
            continue
        if children:
            return int(children[0])
    return None


def namespace_pss_kib(init: int) -> int:
    """Sum of PSS over every process sharing init's PID namespace."""
    try:
        ns = os.readlink(f"/proc/{init}/ns/pid")
    except OSError:
        return 0
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                continue
            for line in Path(f"/proc/{entry}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total
