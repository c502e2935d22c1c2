"""A pool host added to a running stack, then retired (README: "Adding and removing pool hosts").

Under light traffic (sockets that reconnect when closed, and requests), on the
stack of the shards stage: a ws host joins the topology and the inventory, and
site.yml, the one command, puts it into service: nginx's upstreams, every
peer's firewall and Prometheus's targets include it, and nothing else restarts.
New sockets land on it. Then retire.yml drains it (nginx first; its sockets
are closed with GOING_AWAY and come back on the other hosts), it leaves the
inventory, and site.yml takes it out of every peer's configuration. Every
request is answered 200 throughout, and no socket is dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest
import yaml

from replicas.topology import Host, Topology
from tests.replicas.conftest import TOPOLOGY, fact, first, instance_gauges, recap
from tests.replicas.test_drills import HttpLoad, ReconnectingSockets, wait_until

# The host added: a ws host at an address no topology of topologies/ uses.
NEW = Host(name="ws9", index=39, groups=("ws",))
# Sockets open before the change, and opened once the new host serves.
SOCKETS = 40
# Requests a second through nginx all along.
REQUESTS_PER_SECOND = 10
# The blueprint's services: none of them may restart on a host the change does not add or remove.
SERVICES = ("daphne@", "gunicorn", "nginx", "redis", "postgresql", "prometheus", "mtail")

pytestmark = pytest.mark.last


def running_services(stack, name: str) -> dict[str, str]:
    """The blueprint's running services on a host, each with its main process's id."""
    out = stack.run(
        name,
        "systemctl show --type=service --state=running --property=Id,MainPID "
        "$(systemctl list-units --type=service --state=running --plain --no-legend | awk '{print $1}')",
    )
    assert out.returncode == 0, out.stderr
    units = {}
    for block in out.stdout.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if fields.get("Id", "").startswith(SERVICES):
            units[fields["Id"]] = fields["MainPID"]
    return units


def every_host_services(stack, names: list[str]) -> dict[str, dict[str, str]]:
    return {name: running_services(stack, name) for name in names}


def scraped(stack, host: str) -> list[str]:
    """The jobs of Prometheus's active targets labelled with `host`."""
    monitor = stack.address(first("monitoring"))
    out = stack.run(
        first("monitoring"), f"curl -sf 'http://{monitor}:{fact('prometheus_port')}/api/v1/targets?state=active'"
    )
    assert out.returncode == 0, out.stderr
    targets = json.loads(out.stdout)["data"]["activeTargets"]
    return sorted({t["labels"]["job"] for t in targets if t["labels"].get("host") == host})


def mentions(stack, address: str) -> dict[str, list[str]]:
    """Where each peer's configuration names an address: nginx's upstreams, the firewall's ruleset."""
    found = {}
    for host in TOPOLOGY.hosts:
        places = []
        nginx = f"grep -q '{address}:' /etc/nginx/sites-available/channels.conf"
        if "lb" in host.groups and stack.run(host.name, nginx).returncode == 0:
            places.append("nginx")
        if stack.run(host.name, f"nft list ruleset | grep -qw '{address}'").returncode == 0:
            places.append("firewall")
        found[host.name] = places
    return found


# Where a ws host is named (vars/flows.yml: redis and the database accept the app's hosts).
NAMED_ON = {
    host.name: ["nginx"] * ("lb" in host.groups) + ["firewall"] * bool({"redis", "db"} & set(host.groups))
    for host in TOPOLOGY.hosts
}


def changed_hosts(result) -> dict[str, int]:
    return {name: counts.get("changed", 0) for name, counts in recap(result.stdout).items()}


async def test_a_ws_host_added_with_one_command_then_retired_moves_sockets_and_fails_nothing(
    site, hosts, stack, client_addresses, tmp_path
):
    grown = Topology(name=f"{TOPOLOGY.name}+{NEW.name}", hosts=(*TOPOLOGY.hosts, NEW))
    grown_file = tmp_path / "grown.yml"
    grown_file.write_text(
        yaml.safe_dump(
            {
                "name": grown.name,
                "hosts": {h.name: {"index": h.index, "groups": list(h.groups), "vars": h.vars} for h in grown.hosts},
            }
        )
    )
    address = str(NEW.address(stack.harness.cfg.subnet))
    others = [h.name for h in TOPOLOGY.hosts]
    before = await asyncio.to_thread(every_host_services, stack, others)
    first_sockets = ReconnectingSockets(site, SOCKETS, client_addresses[:2])
    more_sockets = ReconnectingSockets(site, SOCKETS, client_addresses[2:])
    # nginx reloads three times here: a GET crossing a closed kept-alive connection is retried (HttpLoad).
    load = HttpLoad(site, REQUESTS_PER_SECOND, client_addresses[0], retry_closed=True)
    figures: dict = {}
    await first_sockets.open()
    traffic = asyncio.create_task(load.run(seconds=1200))
    try:
        # Added: the harness boots the host and writes it into the inventory; site.yml does the rest.
        started = time.monotonic()
        await asyncio.to_thread(stack.harness.up, str(grown_file))
        stack.topology = dataclasses.replace(stack.topology, hosts=grown.hosts)
        hosts[NEW.name] = stack.testinfra(NEW.name)
        booted = time.monotonic() - started
        added = await asyncio.to_thread(stack.converge)
        figures["add"] = f"booted in {booted:.0f} s, site.yml {time.monotonic() - started - booted:.0f} s"
        assert added.returncode == 0, added.stdout[-6000:] + added.stderr[-2000:]
        changed = changed_hosts(added)
        figures["add changed"] = changed
        assert changed[NEW.name] > 0
        assert set(changed) == {h.name for h in grown.hosts}
        assert await wait_until(lambda: scraped(stack, NEW.name) == ["daphne", "node"], 60), scraped(stack, NEW.name)
        assert await asyncio.to_thread(mentions, stack, address) == NAMED_ON

        # New sockets go to the instances holding the fewest (the reloaded nginx counts only its own): some land there.
        await more_sockets.open()
        on_new = await asyncio.to_thread(
            lambda: sum(v for k, v in instance_gauges(hosts, stack, "live").items() if k.startswith(NEW.name + ":"))
        )
        figures["sockets on the new host"] = on_new
        assert on_new > 0
        assert first_sockets.closes == []
        assert more_sockets.closes == []
        after_add = await asyncio.to_thread(every_host_services, stack, others)
        assert after_add == before, "a service restarted on a host the change did not add"

        # Retired: nginx stops routing to it, its sockets close with GOING_AWAY and come back elsewhere.
        started = time.monotonic()
        retired = await asyncio.to_thread(stack.playbook, "retire.yml", "-e", f"retire={NEW.name}")
        figures["retire"] = f"{time.monotonic() - started:.0f} s"
        assert retired.returncode == 0, retired.stdout[-6000:] + retired.stderr[-2000:]
        await asyncio.sleep(3)  # the last reconnects
        moved = first_sockets.closes + more_sockets.closes
        figures["sockets moved"] = {code: moved.count(code) for code in sorted(set(moved))}
        assert moved
        assert set(moved) == {4001}, moved
        assert len(first_sockets.gaps) + len(more_sockets.gaps) == len(moved)
        gauges = await asyncio.to_thread(instance_gauges, hosts, stack, "live")
        assert sum(v for k, v in gauges.items() if k.startswith(NEW.name + ":")) == 0, gauges
        assert sum(gauges.values()) == 2 * SOCKETS, gauges
        assert await wait_until(lambda: scraped(stack, NEW.name) == ["node"], 60), scraped(stack, NEW.name)

        # Removed: out of the topology and the inventory; site.yml takes it out of every peer.
        started = time.monotonic()
        await asyncio.to_thread(stack.harness.up, TOPOLOGY.name)
        stack.topology = TOPOLOGY
        hosts.pop(NEW.name, None)
        removed = await asyncio.to_thread(stack.converge)
        figures["remove"] = f"{time.monotonic() - started:.0f} s"
        assert removed.returncode == 0, removed.stdout[-6000:] + removed.stderr[-2000:]
        assert set(recap(removed.stdout)) == set(others)
        assert await asyncio.to_thread(mentions, stack, address) == {name: [] for name in others}
        assert await wait_until(lambda: scraped(stack, NEW.name) == [], 60), scraped(stack, NEW.name)
        load.stopping = True
        await traffic
        figures["requests"] = {**load.statuses, "retried on a closed kept-alive connection": load.retried}
        serving = await first_sockets.settle() + await more_sockets.settle()
        figures["serving after"] = serving
        after = await asyncio.to_thread(every_host_services, stack, others)
    finally:
        print(
            f"\nfigure: scale-out, {NEW.name} added, retired and removed under {2 * SOCKETS} sockets and "
            f"{REQUESTS_PER_SECOND} req/s: {figures}"
        )
        load.stopping = True
        await asyncio.gather(traffic, return_exceptions=True)
        await first_sockets.close()
        await more_sockets.close()
        if stack.topology is not TOPOLOGY:
            stack.topology = TOPOLOGY
            hosts.pop(NEW.name, None)
            await asyncio.to_thread(stack.harness.up, TOPOLOGY.name)
    assert load.failed() == 0, load.statuses
    assert serving == 2 * SOCKETS
    assert after == before, "a service restarted on a host the change did not add or remove"
