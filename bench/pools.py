"""What runs on the ws hosts' WebSocket ports during a run, and what it costs them.

The project's pool is every `daphne@PORT` instance site.yml made, on the ASGI
server the daphne role runs (`daphne_asgi_server`: daphne or uvicorn); the run
switches it through site.yml's ws tier and back to the inventory's. The raw
baseline takes the same ports while those are stopped (a transient unit
`bench-raw-PORT` per port, one process each as daphne has), so nginx, TLS, the
firewall and the client are the same for both. `restore()` puts the daphne
instances back, whatever happened.

CPU and memory are read on this machine from each replica's processes
(/proc: utime + stime, PSS from smaps_rollup), never from the client.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from pathlib import Path

import yaml

from replicas import host as replica_host

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCH_DIR = "/opt/bench"  # on the replicas: the raw server, its venv and its environment file
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def role_default(role: str, name: str):
    """A role's default, read from its owner (ansible/roles/ROLE/defaults/main.yml)."""
    return yaml.safe_load((ROOT / "ansible" / "roles" / role / "defaults" / "main.yml").read_text())[name]


def asgi_servers() -> tuple[str, ...]:
    """The ASGI servers the ws pool can run, as the daphne role's argument spec lists them (its owner)."""
    specs = yaml.safe_load((ROOT / "ansible" / "roles" / "daphne" / "meta" / "argument_specs.yml").read_text())
    return tuple(specs["argument_specs"]["main"]["options"]["daphne_asgi_server"]["choices"])


# The replicas' generated secrets, one file each (vars/generated_secrets.yml's blueprint_secrets_dir).
SECRETS_DIR = ROOT / "ansible" / ".secrets" / "replicas"


def stack_secrets() -> dict[str, str]:
    """The replicas' generated secrets (site.yml writes them on its first run)."""
    return {p.name: p.read_text().strip() for p in SECRETS_DIR.iterdir()}


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """CPU seconds (utime + stime) of each process of `pids` still there."""
    seconds = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        seconds[pid] = (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND
    return seconds


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings of cpu_by_pid.

    A process started meanwhile counts whole. One that ended meanwhile (the publisher,
    a PostgreSQL backend closed at its age, a gunicorn worker replaced after
    --max-requests) is not counted at all: what
    it spent since the first reading is gone with it, and subtracting what it had
    spent before would make the figure smaller, even negative.
    """
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class Pool:
    """The ws hosts' WebSocket processes: the project's or the raw baseline's."""

    def __init__(self, stack, secrets: dict[str, str]):
        self.stack, self.secrets = stack, secrets
        self.ws = [h.name for h in stack.topology.group("ws")]
        self.redis = [stack.address(h.name) for h in stack.topology.group("redis")]
        self.publisher = stack.topology.group("http")[0].name
        self.ports = {name: self._daphne_ports(name) for name in self.ws}
        self.kind = "project"

    def _sh(self, name: str, command: str, timeout: float = 120) -> str:
        result = self.stack.run(name, command, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{name}: {command[:200]}: {result.stdout[-2000:]} {result.stderr[-2000:]}")
        return result.stdout

    def _daphne_ports(self, name: str) -> list[int]:
        units = self._sh(name, "systemctl list-units --all --plain --no-legend 'daphne@*.service'")
        return sorted(int(port) for port in re.findall(r"daphne@(\d+)\.service", units))

    # -- the raw baseline's files on the hosts ---------------------------------
    def install(self) -> None:
        """The raw server, its venv (from bench/requirements.txt, hash-pinned) and Redis's passwords."""
        files = {name: (HERE / name).read_bytes() for name in ("raw_fanout.py", "requirements.txt")}
        stamp = hashlib.sha256(files["requirements.txt"]).hexdigest()[:16]
        env = (
            f"REDIS_PASSWORD={self.secrets['redis_password']}\n"
            f"SENTINEL_PASSWORD={self.secrets['redis_sentinel_password']}\n"
        )
        for name in [*self.ws, self.publisher]:
            self._sh(name, f"install -d -m 0700 {BENCH_DIR}")
            for filename, content in {**files, "env": env.encode()}.items():
                encoded, path = base64.b64encode(content).decode(), f"{BENCH_DIR}/{filename}"
                self._sh(name, f"echo {encoded} | base64 -d > {path} && chmod 0600 {path}")
            self._sh(
                name,
                f'test "$(cat {BENCH_DIR}/venv/.stamp 2>/dev/null)" = {stamp} || '
                f"(rm -rf {BENCH_DIR}/venv && python3 -m venv {BENCH_DIR}/venv && "
                f"{BENCH_DIR}/venv/bin/pip install -q --disable-pip-version-check --require-hashes "
                f"-r {BENCH_DIR}/requirements.txt && echo {stamp} > {BENCH_DIR}/venv/.stamp)",
                timeout=600,
            )

    def _raw(self, command: str) -> str:
        return (
            f"{BENCH_DIR}/venv/bin/python {BENCH_DIR}/raw_fanout.py --sentinels {','.join(self.redis)} "
            f"--sentinel-port {role_default('blueprint', 'redis_sentinel_port')} "
            f"--master {role_default('blueprint', 'redis_sentinel_master_name')} {command}"
        )

    # -- switching -------------------------------------------------------------
    def use_server(self, server: str | None) -> None:
        """Every instance on `server` (None: what the inventory says), through site.yml's ws tier: the daphne role
        owns the unit, and restarts the instances one by one. Each answers /readyz after."""
        extra = ["--extra-vars", f"daphne_asgi_server={server}"] if server else []
        result = self.stack.playbook("site.yml", "--tags", "ws", *extra)
        if result.returncode != 0:
            raise RuntimeError(f"site.yml --tags ws {' '.join(extra)}: {result.stdout[-3000:]} {result.stderr[-2000:]}")
        self._wait_listening(path="/readyz")

    def servers(self) -> set[str]:
        """The ASGI servers the project's instances run now (read off their processes)."""
        return {server for server, _ in self._project_processes()}

    def use_raw(self) -> None:
        for name in self.ws:
            for port in self.ports[name]:
                self._sh(name, f"systemctl stop daphne@{port}")
                self._sh(
                    name,
                    f"systemd-run --unit=bench-raw-{port} --property=EnvironmentFile={BENCH_DIR}/env "
                    f"--property=LimitNOFILE=65536 {self._raw(f'serve --bind 0.0.0.0 --port {port}')}",
                )
        self.kind = "raw"
        self._wait_listening()

    def restart(self) -> None:
        """Fresh processes: memory a process once took is not given back, so per-socket PSS starts here."""
        unit = "daphne@{}" if self.kind == "project" else "bench-raw-{}"
        for name in self.ws:
            self._sh(name, "systemctl restart " + " ".join(unit.format(p) for p in self.ports[name]))
        self._wait_listening(path="/readyz" if self.kind == "project" else "/")

    def restore(self) -> None:
        """The daphne instances back in service, each answering /readyz; the raw servers gone."""
        for name in self.ws:
            ports = " ".join(str(p) for p in self.ports[name])
            self._sh(
                name,
                f"for p in {ports}; do systemctl stop bench-raw-$p 2>/dev/null; "
                f"systemctl reset-failed bench-raw-$p 2>/dev/null; systemctl start daphne@$p; done; true",
            )
        self.kind = "project"
        self._wait_listening(path="/readyz")

    def _wait_listening(self, path: str = "/", seconds: float = 90) -> None:
        for name in self.ws:
            for port in self.ports[name]:
                probe = f"curl -s -o /dev/null -w '%{{http_code}}' http://{self.stack.address(name)}:{port}{path}"
                deadline = time.monotonic() + seconds
                while True:
                    code = self.stack.run(name, probe, timeout=10).stdout.strip()
                    if code not in ("", "000") and (path != "/readyz" or code == "200"):
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name}:{port} does not answer {path} (last: {code or 'nothing'})")
                    time.sleep(0.5)

    def publish(self, rate: float, count: int, marker: str) -> int:
        """`count` ticks at `rate`/s to every /ws/live/ socket, from the first http host: how many went out."""
        if self.kind == "raw":
            publish = self._raw(f"publish --rate {rate} --count {count} --symbol {marker}")
            command = f"set -a; . {BENCH_DIR}/env; {publish}"
        else:
            command = f"channels-manage publish_ticks --rate {rate} --count {count} --symbols {marker}"
        out = self._sh(self.publisher, command, timeout=count / rate + 120)
        return int(re.search(r"published (\d+) ticks", out).group(1))

    # -- what it costs -----------------------------------------------------------
    def _processes(self, name: str) -> list[int]:
        paths = replica_host.paths(self.stack.harness.cfg, name)
        return replica_host.container_pids(paths)

    def _project_processes(self) -> list[tuple[str, int]]:
        """(server, PID) of each instance's process: its command line runs the venv's `bin/<server>`."""
        found = []
        for name in self.ws:
            for pid in self._processes(name):
                argv = replica_host.pid_cmdline(pid) or ()
                found += [(server, pid) for server in asgi_servers() if any(f"bin/{server}" in arg for arg in argv)]
        return found

    def pids(self) -> list[int]:
        """This machine's PIDs of the pool's processes (the project's instances, or the raw servers)."""
        if self.kind == "project":
            return [pid for _, pid in self._project_processes()]
        found = []
        for name in self.ws:
            for pid in self._processes(name):
                if any("raw_fanout.py" in arg for arg in replica_host.pid_cmdline(pid) or ()):
                    found.append(pid)
        return found

    def replica_pids(self) -> list[int]:
        """Every process of every replica: the whole stack's CPU."""
        return [pid for h in self.stack.topology.hosts for pid in self._processes(h.name)]
