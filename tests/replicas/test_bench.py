"""`./stack bench` end to end, with small counts: every workload against the project's pool on each ASGI
server and the raw baseline, the table, results.json and the plots, and the instances back in service
afterwards, on the inventory's server.

Figures are printed (`figure:` lines), never asserted as times: what this proves
is that the benchmark runs, measures both sides and leaves the stack as it was.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from bench import report
from bench.__main__ import measure
from bench.pools import Pool, asgi_servers
from bench.run import SMOKE
from tests.replicas.conftest import STACK_KIND, instance_gauges, open_ws
from tests.replicas.test_drills import pong, wait_until

pytestmark = pytest.mark.skipif(STACK_KIND != "replicas", reason="the bench reads the replicas' processes here")


def test_the_benchmark_runs_end_to_end_beside_its_raw_baseline(site, stack, hosts, secrets, tmp_path):
    pool = Pool(stack, secrets)
    ports, running = pool.ports, pool.servers()
    results = measure(stack, SMOKE, tmp_path)
    for server in results["servers"]:
        for name, project, raw in report.summary(results, server):
            print(f"figure: bench smoke, {name}: {server} {project}, raw {raw}")

    # The pool was measured on each server, the one it ran first; then it is back on it.
    assert sorted(results["servers"]) == sorted(asgi_servers())
    assert {results["servers"][0]} == running
    assert pool.servers() == running
    for kind in (*results["servers"], "raw"):
        figures = results[kind]
        # Every workload ran and measured something on both sides.
        assert [s["sockets"] for s in figures["broadcast"]][:1] == SMOKE.socket_steps[:1], figures["broadcast"]
        assert figures["rate"], figures
        assert figures["notify"], figures
        first = figures["broadcast"][0]
        assert first["published"] == SMOKE.seconds, first
        assert first["received"] > 0, first
        assert figures["notify"][0]["received"] > 0, figures["notify"]
        assert figures["idle"]["pss_kib_no_socket"] > 0, figures["idle"]
        assert figures["idle"]["pss_kib_with_sockets"] > 0, figures["idle"]
        # The CPU was read off every process of the pool (a figure of 0.0 s is possible for the raw
        # server over a few seconds at these counts: it is read in clock ticks).
        instances = sum(len(pool_ports) for pool_ports in ports.values())
        for step in (*figures["broadcast"], *figures["rate"], *figures["notify"]):
            assert step["pool_processes"] == instances, step
        # At these counts nothing may be lost: every tick reached every socket.
        assert first["lost"] == 0, first
        # Every step read the one Redis master's own counters around it: the notifications went
        # through it (commands counted) and its CPU was read.
        for step in (*figures["rate"], *figures["notify"]):
            assert len(step["master_cpu_s"]) == 1, step
        assert sum(figures["notify"][-1]["master_commands"].values()) >= figures["notify"][-1]["accepted"] > 0

    written = json.loads((tmp_path / "results.json").read_text())
    assert set(written) >= {*asgi_servers(), "raw", "settings", "machine"}
    for chart in ("broadcast", "rate", "notify"):
        assert (tmp_path / f"{chart}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The project's pool serves again: no bench process left, sockets through nginx answered,
    # and the gauges of the bench's sockets back to 0.
    for ws_host in (h.name for h in stack.topology.group("ws")):
        assert stack.run(ws_host, "systemctl list-units --plain --no-legend 'bench-raw-*'").stdout.strip() == ""

    async def serving():
        async with open_ws(site, "/ws/orders/") as ws:
            return await pong(ws)

    assert asyncio.run(serving())
    assert asyncio.run(wait_until(lambda: sum(instance_gauges(hosts, stack, "live").values()) == 0, 15))
