"""The slow VM suite's pieces that can be checked without booting anything:
the box recipe, libvirt's networks and settings, and its agreement with the
Vagrant inventory and the replicas."""

from __future__ import annotations

import ipaddress
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from replicas import config, host, network
from replicas.system import HarnessError
from vms import ENV as VM_ENV
from vms import box, libvirt

ROOT = Path(__file__).resolve().parents[2]
CFG = config.from_env({"REPLICAS_CACHE_DIR": "/nonexistent/cache"})
PRIVATE = ipaddress.ip_network(VM_ENV["CHANNELS_SUBNET"])


def test_the_box_is_named_after_its_recipe(monkeypatch):
    first = box.box_path(CFG)
    assert first.parent == CFG.cache_dir / "boxes"
    assert first.suffix == ".box"
    monkeypatch.setattr(box, "PACKAGES", (*box.PACKAGES, "htop"))
    assert box.box_path(CFG) != first


def test_the_box_trusts_the_hosts_cas_and_a_new_ca_means_a_new_box(tmp_path, monkeypatch):
    ca = tmp_path / "proxy.crt"
    ca.write_text("one")
    monkeypatch.setattr(host, "host_cas", lambda: [ca])
    first = box.box_path(CFG)
    ca.write_text("another")
    assert box.box_path(CFG) != first


def test_the_box_boots_with_networkd_and_carries_vagrants_key():
    assert {"linux-image-amd64", "grub-pc", "openssh-server", "sudo", "python3", "systemd-resolved"} <= set(
        box.PACKAGES
    )
    assert "ifupdown" not in box.PACKAGES
    assert box.VAGRANT_PUBLIC_KEY.is_file()  # shipped in Debian's vagrant package
    script = box.SETUP_SCRIPT
    assert "systemctl enable systemd-networkd.service systemd-resolved.service" in script
    assert "NOPASSWD:ALL" in script
    assert "/home/vagrant/.ssh/authorized_keys" in script
    # No VM shares another's host keys: removed from the box, made on each first boot.
    assert "rm -f /etc/ssh/ssh_host_*" in script
    assert "ssh-keygen -A" in script


def test_the_box_scripts_are_valid_shell(tmp_path):
    setup = box.SETUP_SCRIPT.replace("@MIRROR@", CFG.mirror)
    assert subprocess.run(["sh", "-n"], input=setup, text=True, capture_output=True).returncode == 0
    first_boot = setup.split(f"cat > {box.FIRST_BOOT} <<'BOOT'\n", 1)[1].split("\nBOOT\n", 1)[0]
    assert first_boot.startswith("#!/bin/sh")
    assert box.GRUB_DONE in first_boot
    assert subprocess.run(["sh", "-n"], input=first_boot, text=True, capture_output=True).returncode == 0
    broken = first_boot.replace("\nfi\n", "\n", 1)  # the check catches a real slip
    assert subprocess.run(["sh", "-n"], input=broken, text=True, capture_output=True).returncode != 0


@pytest.fixture
def lv(tmp_path, monkeypatch):
    monkeypatch.setattr(libvirt, "QEMU_CONF", tmp_path / "etc" / "qemu.conf")
    return libvirt.Libvirt(tmp_path / "state", PRIVATE, CFG)


def test_networks_are_open_mode_with_dhcp_on_the_management_network_only(lv):
    lv.state_dir.mkdir()
    seen = {}
    for name, cfg in lv.networks.items():
        xml = ET.parse(lv._network_xml(name, cfg)).getroot()
        assert xml.find("forward").get("mode") == "open"  # libvirt adds no firewall rules
        assert xml.find("bridge").get("name") == cfg.bridge
        ip = xml.find("ip")
        seen[name] = (ip.get("address"), ip.get("netmask"), xml.find("ip/dhcp/range") is not None)
    assert seen == {
        "vagrant-libvirt": ("192.168.121.1", "255.255.255.0", True),
        "channels-private": ("10.78.0.1", "255.255.255.0", False),
    }


def test_each_bridge_gets_the_replicas_egress_rules(lv):
    for cfg in lv.networks.values():
        rules = network.nft_ruleset(cfg)
        assert f'ip saddr {cfg.subnet} oifname != "{cfg.bridge}" masquerade' in rules
        assert f'iifname "{cfg.bridge}" drop' in rules
        assert cfg.nft_table != CFG.nft_table


def test_qemu_conf_is_written_only_over_our_own(lv):
    libvirt.QEMU_CONF.parent.mkdir()
    lv._write_qemu_conf()
    assert 'user = "root"' in libvirt.QEMU_CONF.read_text()
    lv._write_qemu_conf()  # ours: rewritten
    libvirt.QEMU_CONF.write_text('user = "someone"\n')
    with pytest.raises(HarnessError, match="not written by this suite"):
        lv._write_qemu_conf()
    assert libvirt.QEMU_CONF.read_text() == 'user = "someone"\n'


def test_the_vagrant_inventory_admits_ssh_from_the_management_network():
    settings = yaml.safe_load((ROOT / "ansible/inventories/vagrant/vars.yml").read_text())
    assert str(libvirt.MANAGEMENT_SUBNET) in settings["firewall_admin_networks"]
    assert settings["ansible_become"] is True


def test_the_vm_network_stays_clear_of_the_replicas():
    assert not PRIVATE.overlaps(config.from_env({}).subnet)
    assert not PRIVATE.overlaps(libvirt.MANAGEMENT_SUBNET)
    bridges = {cfg.bridge for cfg in libvirt.Libvirt(Path("/x"), PRIVATE, CFG).networks.values()}
    assert config.from_env({}).bridge not in bridges
    assert (ROOT / "ansible" / VM_ENV["CHANNELS_ANSIBLE_EXTRA_VARS"]).is_file()
