"""Bring the replicas of a topology up and down, and act on single hosts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import base, cgroups, host, inventory, network, sysctl
from .config import Config
from .system import HarnessError, log, mounts_under, nspawn_pids_for, run, umount_all
from .topology import Host, Topology, load

BOOT_TIMEOUT = 180.0


class Harness:
    def __init__(self, cfg: Config):
        self.cfg = cfg

    # -- state ---------------------------------------------------------------
    def load_state(self) -> dict:
        try:
            state = json.loads(self.cfg.state_file.read_text())
            return state if isinstance(state, dict) else {}
        except (FileNotFoundError, json.JSONDecodeError):
            # A run killed mid-write leaves nothing usable; down/up still find what is on disk.
            return {}

    def save_state(self, state: dict) -> None:
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cfg.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.cfg.state_file)

    def topology(self, state: dict | None = None) -> Topology:
        state = self.load_state() if state is None else state
        if "topology" not in state:
            raise HarnessError("no replicas are up (run `up` first)")
        return load(state["topology"])

    # -- ssh -----------------------------------------------------------------
    def ssh_argv(self, address: str, *, user: str = "root", tty: bool = False) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.cfg.ssh_key),
            "-o",
            f"UserKnownHostsFile={self.cfg.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=3",
            "-o",
            "LogLevel=ERROR",
            *(["-t"] if tty else []),
            f"{user}@{address}",
        ]

    def run_on(self, h: Host, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [*self.ssh_argv(str(h.address(self.cfg.subnet))), command]
        try:
            return subprocess.run(argv, text=True, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 255, "", f"timed out after {timeout}s")

    # -- up ------------------------------------------------------------------
    def up(self, topology_name: str) -> dict:
        cfg = self.cfg
        topo = load(topology_name)
        topo.check_fits(cfg.subnet)
        network.check_no_clash(cfg)
        state = self.load_state()
        base_path, build_seconds = base.ensure_base(cfg)
        wanted = {"subnet": str(cfg.subnet), "bridge": cfg.bridge, "base": str(base_path)}
        if state and any(state.get(k) != v for k, v in wanted.items()):
            log("replicas on another network or base image exist: taking them down first")
            self.down()
            state = {}
        self._ensure_key()
        # Another topology grows or shrinks the running stack: hosts it no longer has (or has at
        # another address) are removed, hosts it adds are booted below, the others keep running.
        named = str(Path(topology_name).resolve()) if Path(topology_name).suffix else topology_name
        state.update(wanted, topology=named)
        state.setdefault("hosts", {})
        for name, recorded in list(state["hosts"].items()):
            if name not in topo.names() or recorded.get("index", topo.host(name).index) != topo.host(name).index:
                self._remove(name, state)
        # Forwarding for the bridge; and inotify instances: Linux's default of 128 per user runs
        # out at about twelve hosts ("Failed to create control group inotify object: Too many
        # open files" at boot). Both are put back by down.
        sysctl.raise_all(
            cfg.sysctl_record,
            {
                "net.ipv4.ip_forward": 1,
                "fs.inotify.max_user_instances": sysctl.inotify_instances_needed(len(topo.hosts)),
            },
        )
        self.save_state(state)
        network.ensure_bridge(cfg)
        network.ensure_nft(cfg)

        started = time.monotonic()
        booted = []
        for h in topo.hosts:
            p = host.paths(cfg, h.name)
            pid = state["hosts"].get(h.name, {}).get("pid")
            if host.is_running(pid, p) and host.is_mounted(p):
                host.write_hosts(cfg, topo, p)
                continue
            self._boot(topo, h, base_path, state)
            booted.append(h.name)
        self._write_access(topo)
        self.wait_ready(topo.hosts)
        boot_seconds = time.monotonic() - started
        report = {
            "topology": topo.name,
            "hosts": len(topo.hosts),
            "booted": booted,
            "base_build_seconds": build_seconds,
            "boot_seconds": boot_seconds if booted else None,
            "idle_memory_mib": self.memory_per_host(topo),
        }
        self._print_report(report)
        return report

    def _ensure_key(self) -> None:
        if not self.cfg.ssh_key.exists():
            self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "replicas", "-f", str(self.cfg.ssh_key)])

    def _boot(self, topo: Topology, h: Host, base_path: Path, state: dict) -> None:
        cfg = self.cfg
        p = host.paths(cfg, h.name)
        # Leftovers of a killed run: processes and mounts of this host go first.
        host.stop(p, kill=True)
        host.unmount(p)
        host.mount(cfg, Path(base_path), p)
        host.write_config(cfg, topo, h, p, Path(str(cfg.ssh_key) + ".pub").read_text())
        state["hosts"][h.name] = {"pid": host.boot(cfg, h, p), "index": h.index}
        self.save_state(state)
        log(f"{h.name}: booting at {h.address(cfg.subnet)}")

    def _write_access(self, topo: Topology) -> None:
        cfg = self.cfg
        lines = []
        for h in topo.hosts:
            key = host.host_public_key(host.paths(cfg, h.name))
            lines.append(inventory.known_hosts_line(str(h.address(cfg.subnet)), h.name, key))
        cfg.known_hosts.write_text("".join(lines))
        cfg.inventory_path.parent.mkdir(parents=True, exist_ok=True)
        cfg.inventory_path.write_text(inventory.render(cfg, topo))

    def wait_ready(self, hosts: tuple[Host, ...] | list[Host]) -> None:
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            errors = [e for e in pool.map(self._wait_one, hosts) if e]
        if errors:
            raise HarnessError("replicas not ready:\n" + "\n".join(errors))

    def _wait_one(self, h: Host) -> str | None:
        p = host.paths(self.cfg, h.name)
        pid = self.load_state().get("hosts", {}).get(h.name, {}).get("pid")
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            if not host.is_running(pid, p):
                lines = [line for line in p.log.read_text(errors="replace").splitlines() if line.strip()]
                tail = lines[-25:]
                return f"{h.name}: systemd-nspawn exited; console:\n    " + "\n    ".join(tail)
            if self.run_on(h, "true", timeout=10).returncode == 0:
                break
            if time.monotonic() > deadline:
                return f"{h.name}: no SSH on {h.address(self.cfg.subnet)} after {BOOT_TIMEOUT:.0f}s"
            time.sleep(0.5)
        left = max(10.0, deadline - time.monotonic())
        res = self.run_on(h, f"timeout {left:.0f} systemctl is-system-running --wait", timeout=left + 5)
        if res.stdout.strip() == "running":
            return None
        failed = self.run_on(h, "systemctl --failed --no-legend --plain | awk '{print $1}'").stdout.split()
        journals = "".join(self.run_on(h, f"journalctl -u {unit} -n 20 --no-pager").stdout for unit in failed)
        return f"{h.name}: system is {res.stdout.strip() or res.stderr.strip()!r}; failed units: {failed}\n{journals}"

    def memory_per_host(self, topo: Topology) -> dict[str, float]:
        """Proportional memory (PSS) of every process in each replica's PID namespace."""
        result = {}
        for h in topo.hosts:
            init = host.container_init(host.paths(self.cfg, h.name))
            if init:
                result[h.name] = round(host.namespace_pss_kib(init) / 1024, 1)
        return result

    def _print_report(self, report: dict) -> None:
        print(f"replicas: topology {report['topology']}, {report['hosts']} hosts up")
        if report["base_build_seconds"] is not None:
            print(f"  base image built in {report['base_build_seconds']:.1f} s")
        if report["boot_seconds"] is not None:
            print(f"  booted {len(report['booted'])} hosts to 'running' in {report['boot_seconds']:.1f} s")
        mem = report["idle_memory_mib"]
        if mem:
            print(
                f"  idle memory per host: {min(mem.values()):.0f}-{max(mem.values()):.0f} MiB PSS "
                f"(total {sum(mem.values()):.0f} MiB)"
            )
        print(f"  inventory: {self.cfg.inventory_path}")

    # -- down ----------------------------------------------------------------
    def down(self) -> None:
        cfg = self.cfg
        state = self.load_state()
        hosts_dir = cfg.state_dir / "hosts"
        names = set(state.get("hosts", {})) | ({d.name for d in hosts_dir.iterdir()} if hosts_dir.is_dir() else set())
        for name in sorted(names):
            self._remove(name, state)
        for pid in nspawn_pids_for(cfg.state_dir):
            host.signal_if_alive(pid, signal.SIGKILL)
        umount_all(cfg.state_dir)
        cgroups.remove(cfg.cgroup_parent)
        network.remove_nft(cfg)
        network.remove_bridge(cfg)
        sysctl.restore_all(cfg.sysctl_record)
        if cfg.inventory_path.exists():
            cfg.inventory_path.unlink()
        if cfg.state_dir.exists() and not mounts_under(cfg.state_dir):
            shutil.rmtree(cfg.state_dir)
        log("down: replicas, mounts, bridge and nftables table removed")

    def _remove(self, name: str, state: dict) -> None:
        """One host stopped and its files removed (its apt cache kept for the next boot)."""
        p = host.paths(self.cfg, name)
        host.stop(p)
        host.unmount(p)
        if host.is_mounted(p):
            raise HarnessError(f"{name}: {p.merged} is still mounted; not removing it")
        host.harvest_apt_cache(self.cfg, p)
        shutil.rmtree(p.root, ignore_errors=True)
        if name in state.get("hosts", {}):
            del state["hosts"][name]
            self.save_state(state)
        log(f"{name}: removed")

    # -- load clients --------------------------------------------------------
    @contextlib.contextmanager
    def client_addresses(self, count: int):
        """`count` source addresses on the bridge for a load client, removed afterwards (and by `down`)."""
        topo = self.topology()
        taken = {h.address(self.cfg.subnet) for h in topo.hosts}
        addresses = network.client_addresses(self.cfg, count, taken)
        network.add_addresses(self.cfg, addresses)
        try:
            yield [str(a) for a in addresses]
        finally:
            network.remove_addresses(self.cfg, addresses)

    # -- single hosts --------------------------------------------------------
    def stop(self, name: str, *, kill: bool = False) -> None:
        state = self.load_state()
        self.topology(state).host(name)
        p = host.paths(self.cfg, name)
        host.stop(p, kill=kill)
        host.unmount(p)
        state.setdefault("hosts", {}).setdefault(name, {})["pid"] = None
        self.save_state(state)

    def start(self, name: str) -> None:
        state = self.load_state()
        topo = self.topology(state)
        h = topo.host(name)
        p = host.paths(self.cfg, name)
        if host.is_running(state["hosts"].get(name, {}).get("pid"), p):
            return
        self._boot(topo, h, Path(state["base"]), state)
        self.wait_ready([h])

    def reset(self, name: str) -> None:
        state = self.load_state()
        topo = self.topology(state)
        h = topo.host(name)
        p = host.paths(self.cfg, name)
        host.stop(p)
        host.unmount(p)
        host.harvest_apt_cache(self.cfg, p)
        shutil.rmtree(p.root)
        self._boot(topo, h, Path(state["base"]), state)
        self._write_access(topo)
        self.wait_ready([h])

    def status(self) -> list[dict]:
        state = self.load_state()
        if "topology" not in state:
            return []
        topo = self.topology(state)
        rows = []
        for h in topo.hosts:
            p = host.paths(self.cfg, h.name)
            pid = state["hosts"].get(h.name, {}).get("pid")
            running = host.is_running(pid, p)
            system = self.run_on(h, "systemctl is-system-running", timeout=10).stdout.strip() if running else "-"
            rows.append(
                {
                    "host": h.name,
                    "address": str(h.address(self.cfg.subnet)),
                    "groups": ",".join(h.groups),
                    "pid": pid if running else None,
                    "system": system or "unreachable",
                }
            )
        return rows

    def ssh(self, name: str, command: list[str]) -> int:
        h = self.topology().host(name)
        argv = self.ssh_argv(str(h.address(self.cfg.subnet)), tty=not command and sys.stdin.isatty())
        return subprocess.call(argv + command)
