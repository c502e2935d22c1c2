"""A Debian 12 Vagrant box for libvirt, built on this machine (no Vagrant Cloud here).

debootstrap lays the root filesystem into a folder; ``mkfs.ext4 -d`` writes it
into the partition's place in a raw disk behind an MBR (``-E offset``: the host
kernel needs no loop device or partition support for that). One QEMU boot, straight
into the box's own kernel with ``init=`` a script, installs GRUB on the disk
from inside the guest and powers off. The disk becomes a compressed qcow2 with
``metadata.json``: a ``.box`` Vagrant adds like any other.

The box is cached under a name derived from its recipe, like the replicas'
base image: change the recipe and the next run builds a new one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from replicas import base, host
from replicas.config import Config
from replicas.system import HarnessError, log, run

BOX_NAME = "channels/bookworm64-local"
DISK_GIB = 16
PARTITION_START = 1024 * 1024  # 1 MiB: room for GRUB's core image after the MBR
# A bootable machine on top of the replicas' packages. systemd-networkd (in
# systemd) configures the network, systemd-resolved takes DNS from DHCP; ifupdown is left out on purpose, Vagrant's
# Debian guest writes networkd files when networkd is enabled.
PACKAGES = (
    *base.PACKAGES,
    "linux-image-amd64",
    "grub-pc",
    "initramfs-tools",
    "udev",
    "kmod",
    "e2fsprogs",
    "systemd-resolved",
)
VAGRANT_PUBLIC_KEY = Path("/usr/share/rubygems-integration/all/gems/vagrant-2.3.4/keys/vagrant.pub")
FIRST_BOOT = "/usr/local/sbin/box-install-grub"
GRUB_DONE = "box: grub installed"

# Runs inside the new root (chroot) once, after debootstrap.
SETUP_SCRIPT = f"""
set -eu
{base.NO_IDENTITY}
echo vagrant > /etc/hostname
printf '127.0.0.1 localhost\\n127.0.1.1 vagrant\\n' > /etc/hosts
printf 'LABEL=root / ext4 errors=remount-ro 0 1\\n' > /etc/fstab
# Every VM makes its own host keys on its first boot, before sshd checks its configuration.
mkdir -p /etc/systemd/system/ssh.service.d
printf '[Service]\\nExecStartPre=\\nExecStartPre=/usr/bin/ssh-keygen -A\\nExecStartPre=/usr/sbin/sshd -t\\n' \\
  > /etc/systemd/system/ssh.service.d/host-keys.conf
# DHCP on any NIC Vagrant has not configured (its 50-vagrant-*.network files sort first).
printf '[Match]\\nName=en* eth*\\n\\n[Network]\\nDHCP=yes\\n' > /etc/systemd/network/99-dhcp.network
systemctl enable systemd-networkd.service systemd-resolved.service
{base.sudo_user("vagrant")}
install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh
install -m 0600 -o vagrant -g vagrant /tmp/vagrant.pub /home/vagrant/.ssh/authorized_keys
rm /tmp/vagrant.pub
cat > /etc/default/grub <<GRUB
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT="console=tty0 console=ttyS0,115200"
GRUB_CMDLINE_LINUX=""
GRUB_TERMINAL="console serial"
GRUB_DISABLE_OS_PROBER=true
GRUB
cat > /etc/apt/sources.list <<SRC
deb @MIRROR@ bookworm main
deb @MIRROR@ bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
cat > {FIRST_BOOT} <<'BOOT'
#!/bin/sh
# The box's only boot at build time (init= on QEMU's kernel command line).
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
mount -o remount,rw /
if grub-install --target=i386-pc /dev/vda && update-grub; then
  echo "{GRUB_DONE}" > /dev/ttyS0
fi
rm -f {FIRST_BOOT}
sync
# Read-only at once (this script's own file is still open), then power off. Init
# must not exit meanwhile: the kernel would panic (panic=1 makes QEMU stop then).
echo u > /proc/sysrq-trigger
echo o > /proc/sysrq-trigger
sleep 60
BOOT
chmod 0755 {FIRST_BOOT}
apt-get clean
"""


def recipe(cfg: Config) -> str:
    # The host's CAs go into the box (as into the replicas): a changed CA means a new box.
    cas = [hashlib.sha256(crt.read_bytes()).hexdigest() for crt in host.host_cas()]
    return "\n".join([base.SUITE, cfg.mirror, " ".join(PACKAGES), SETUP_SCRIPT, str(DISK_GIB), *cas])


def box_path(cfg: Config) -> Path:
    return cfg.cache_dir / "boxes" / f"bookworm64-libvirt-{hashlib.sha256(recipe(cfg).encode()).hexdigest()[:12]}.box"


def ensure_box(cfg: Config) -> tuple[Path, float | None]:
    """The .box file, building it if needed; returns (path, seconds spent building or None)."""
    target = box_path(cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target, None
        started = time.monotonic()
        work = target.with_suffix(".building")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            build(cfg, work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for old in target.parent.glob("*.box"):
            if old != target:
                log(f"removing outdated box {old.name}")
                old.unlink()
        return target, time.monotonic() - started


def build(cfg: Config, work: Path, target: Path) -> None:
    root = work / "root"
    log(f"building box {target.name}: debootstrap with a kernel and GRUB")
    debs = cfg.cache_dir / "box-debs"  # kept for the next build of a changed recipe
    debs.mkdir(exist_ok=True)
    base.debootstrap(cfg, root, PACKAGES, f"--cache-dir={debs}")
    shutil.copy(VAGRANT_PUBLIC_KEY, root / "tmp" / "vagrant.pub")
    run(["chroot", str(root), "/bin/sh", "-c", SETUP_SCRIPT.replace("@MIRROR@", cfg.mirror)])
    host.share_host_trust(root)
    kernel = sorted((root / "boot").glob("vmlinuz-*"))[-1]
    initrd = sorted((root / "boot").glob("initrd.img-*"))[-1]
    shutil.copy(kernel, work / "vmlinuz")
    shutil.copy(initrd, work / "initrd.img")

    log("box: root filesystem into a partition of a raw disk")
    disk = work / "disk.raw"
    size = DISK_GIB * 1024**3
    with open(disk, "wb") as fh:
        fh.truncate(size)
    run(["sfdisk", "--quiet", str(disk)], input=f"start={PARTITION_START // 512}, type=83, bootable\n")
    # The file system goes straight into the partition's place in the (sparse) disk.
    fs_size = f"{(size - PARTITION_START) // 1024}k"
    run(["mkfs.ext4", "-q", "-L", "root", "-E", f"offset={PARTITION_START}", "-d", str(root), str(disk), fs_size])
    shutil.rmtree(root)

    log("box: one boot under QEMU to install GRUB from inside the guest")
    serial = work / "serial.log"
    run(
        [
            "qemu-system-x86_64",
            "-machine", "pc,accel=tcg",
            "-m", "1024",
            "-display", "none",
            "-no-reboot",
            "-nic", "none",
            "-serial", f"file:{serial}",
            "-drive", f"file={disk},format=raw,if=virtio",
            "-kernel", str(work / "vmlinuz"),
            "-initrd", str(work / "initrd.img"),
            "-append", f"root=/dev/vda1 rw console=ttyS0 panic=1 init={FIRST_BOOT}",
        ],
        timeout=900,
    )  # fmt: skip
    if GRUB_DONE not in serial.read_text(errors="replace"):
        tail = "\n".join(serial.read_text(errors="replace").splitlines()[-20:])
        raise HarnessError(f"GRUB was not installed in the box's disk; the guest printed:\n{tail}")

    log("box: compressed qcow2 and metadata")
    run(["qemu-img", "convert", "-c", "-O", "qcow2", str(disk), str(work / "box.img")])
    disk.unlink()
    metadata = {"provider": "libvirt", "format": "qcow2", "virtual_size": DISK_GIB}
    (work / "metadata.json").write_text(json.dumps(metadata))
    (work / "Vagrantfile").write_text('Vagrant.configure("2") { |config| }\n')
    partial = target.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        for name in ("metadata.json", "Vagrantfile", "box.img"):
            tar.add(work / name, arcname=name)
    partial.rename(target)
    log(f"box: {target} ({target.stat().st_size // 1024**2} MiB)")


def ensure_added(box: Path) -> None:
    """The box under BOX_NAME in Vagrant, replaced when the file changed."""
    stamp = box.name
    listed = subprocess.run(["vagrant", "box", "list", "--machine-readable"], capture_output=True, text=True).stdout
    vagrant_home = Path(os.environ.get("VAGRANT_HOME", Path.home() / ".vagrant.d"))
    marker = vagrant_home / "boxes" / BOX_NAME.replace("/", "-VAGRANTSLASH-") / ".channels-source"
    if BOX_NAME in listed and marker.is_file() and marker.read_text() == stamp:
        return
    log(f"vagrant box add {BOX_NAME} from {box.name}")
    run(["vagrant", "box", "add", "--force", "--name", BOX_NAME, str(box)])
    marker.write_text(stamp)
