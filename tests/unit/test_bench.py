"""The benchmark's arithmetic: what a step "held", the summary rows, ratios, latencies from tick stamps."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from datetime import UTC, datetime

import pytest

from bench import report
from bench.load import Site, Window, live_frames, made_users, percentile
from bench.pools import cpu_by_pid, cpu_spent, role_default
from bench.run import BOUND_MS, SMOKE, Settings, held, sources_needed


def step(key, value, p95, lost=0, **extra):
    return {key: value, "p50_ms": p95 / 2, "p95_ms": p95, "p99_ms": p95, "lost": lost, "client_cpu_pct": 5.0, **extra}


def side(sockets, rates, notify):
    costs = {"pool_cpu_us_per_msg": 50.0, "stack_cpu_us_per_msg": 120.0}
    return {
        "broadcast": [step("sockets", n, p95) for n, p95 in sockets],
        "rate": [step("rate", r, p95, sockets=1000, **costs) for r, p95 in rates],
        "notify": [
            step("rate", r, p95, failed=0, new_redis_per_request=0.0, new_sentinel_per_request=0.0) for r, p95 in notify
        ],
        "idle": {"cpu_pct_idle_sockets": 2.0, "cpu_pct_no_socket": 0.5, "kib_per_socket": 30.0},
    }


RESULTS = {
    "settings": {"rate_sockets": 1000, "idle_sockets": 1000},
    "servers": ["daphne"],
    "daphne": side([(250, 90), (500, 300)], [(1, 80), (2, 120), (5, 900)], [(10, 40), (25, 150)]),
    "raw": side([(250, 10), (500, 12), (1000, 20)], [(1, 5), (2, 6), (5, 7)], [(10, 5), (25, 6)]),
}


def test_a_step_holds_only_with_nothing_lost_nothing_failed_and_p95_within_the_bound():
    assert held(step("sockets", 1, BOUND_MS), BOUND_MS)
    assert not held(step("sockets", 1, BOUND_MS + 0.1), BOUND_MS)
    assert not held(step("sockets", 1, 10, lost=1), BOUND_MS)
    assert not held(step("rate", 1, 10, failed=1), BOUND_MS)
    assert not held(step("sockets", 1, 10, refused={"500": 1}), BOUND_MS)
    assert not held({"p95_ms": None, "lost": 0}, BOUND_MS)  # nothing arrived


def test_the_summary_quotes_the_last_step_held_and_says_when_the_steps_ran_out():
    rows = {name: (project, raw) for name, project, raw in report.summary(RESULTS, "daphne")}
    assert rows["sockets held at 1 broadcast/s (p95 ≤ 250 ms, 0 lost)"] == (250, "≥ 1000")
    assert rows["broadcasts/s held at 1,000 sockets"] == (2, "≥ 5")
    assert rows["notifications/s held, POST → socket (p95 < 100 ms)"] == (10, "≥ 25")
    # Costs compare the largest step both held: 2/s here.
    assert rows["p95 delivery, ms, at 1,000 sockets, 2/s"] == (120, 6)


def test_costs_compare_the_first_step_both_ran_when_the_project_held_none():
    results = {**RESULTS, "daphne": side([(250, 900)], [(1, 800)], [(10, 400)])}
    rows = {name: (project, raw) for name, project, raw in report.summary(results, "daphne")}
    assert rows["p95 delivery, ms, at 1,000 sockets, 1/s"] == (800, 5)
    assert rows["broadcasts/s held at 1,000 sockets"] == (0, "≥ 5")


def test_the_table_prints_project_raw_and_their_ratio():
    lines = report.table(RESULTS).splitlines()
    sockets = next(line for line in lines if line.startswith("| sockets held"))
    assert [cell.strip() for cell in sockets.strip("|").split("|")][1:] == ["250", "≥ 1000", "0.25"]
    zero = next(line for line in lines if line.startswith("| new Redis"))
    assert zero.rstrip(" |").endswith("—")  # no ratio to a zero


def test_the_table_puts_each_servers_pool_side_by_side_with_raw_and_their_ratios():
    uvicorn = side([(250, 80), (500, 90), (1000, 400)], [], [(10, 40)])
    del uvicorn["rate"]  # as if its rate workload had not run
    both = {**RESULTS, "servers": ["daphne", "uvicorn"], "uvicorn": uvicorn}
    lines = report.table(both).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "figure",
        "daphne",
        "uvicorn",
        "raw",
        "daphne ÷ raw",
        "uvicorn ÷ raw",
    ]
    sockets = next(line for line in lines if line.startswith("| sockets held"))
    assert [c.strip() for c in sockets.strip("|").split("|")][1:] == ["250", "500", "≥ 1000", "0.25", "0.50"]
    # A row one server lacks shows "—" for it.
    rate = next(line for line in lines if line.startswith("| broadcasts/s held"))
    assert [c.strip() for c in rate.strip("|").split("|")][1:] == ["2", "—", "≥ 5", "0.40", "—"]


def test_the_raw_server_declines_the_compression_the_bench_client_offers():
    """Frames as the project's pools send them: the raw server's options negotiate no permessage-deflate
    with a client that offers it (websockets' default, as bench.load's sockets connect)."""
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    from bench.raw_fanout import SERVER_OPTIONS

    async def negotiated(options: dict) -> str | None:
        async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, **options) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}") as ws:
                return ws.response.headers.get("Sec-WebSocket-Extensions")

    assert asyncio.run(negotiated({})) is not None  # what the raw side had: compression accepted
    assert asyncio.run(negotiated(SERVER_OPTIONS)) is None


def test_latency_is_receipt_minus_the_publishers_stamp_and_only_this_windows_ticks_count():
    window = Window("B250")
    on_frame = live_frames(lambda: window)
    sent = datetime(2026, 1, 1, tzinfo=UTC)
    stamp = sent.isoformat()
    frame = json.dumps({"type": "batch", "updates": [{"symbol": "B250", "ts": stamp}, {"symbol": "B500", "ts": stamp}]})
    on_frame(frame, sent.timestamp() + 0.120)
    on_frame(frame, sent.timestamp() + 0.080)
    assert [round(x, 3) for x in window.latencies] == [0.12, 0.08]
    assert window.summary(expected=3) == {"received": 2, "lost": 1, "p50_ms": 120.0, "p95_ms": 120.0, "p99_ms": 120.0}
    assert percentile([], 0.95) is None


def test_the_client_has_enough_addresses_for_nginxs_per_address_limit():
    per_address = role_default("nginx", "nginx_connections_per_ip")
    assert sources_needed(SMOKE) == 1
    full = Settings()
    assert sources_needed(full) * per_address > full.max_sockets()


def test_a_run_of_some_workloads_reports_only_their_rows():
    only_notify = {k: {"notify": v["notify"]} for k, v in RESULTS.items() if k in ("daphne", "raw")}
    rows = [name for name, _, _ in report.summary({**RESULTS, **only_notify}, "daphne")]
    assert rows == [
        "notifications/s held, POST → socket (p95 < 100 ms)",
        "new Redis connections per notification",
        "new Sentinel connections per notification",
        "client CPU, highest % of one core in a step",
    ]


def test_a_site_crosses_to_the_clients_worker_processes_and_builds_its_tls_context_there(tmp_path):
    import pickle
    import ssl

    site = Site("https://10.77.0.11", str(tmp_path / "lb.crt"), session="s", user_id=3, token="t")
    site.__dict__["_ssl"] = ssl.create_default_context()  # as if used in this process
    copy = pickle.loads(pickle.dumps(site))
    assert (copy.base, copy.cafile, copy.session, copy.user_id, copy.token) == (
        "https://10.77.0.11",
        site.cafile,
        "s",
        3,
        "t",
    )
    assert "_ssl" not in copy.__dict__


def test_cpu_spent_counts_a_new_process_whole_and_never_goes_negative_when_one_ends():
    # A process replaced mid-step (a database backend closed at its age, a gunicorn worker
    # after --max-requests): the old one (pid 2) is gone with its 40 s, the new one (pid 4)
    # started meanwhile.
    before = {1: 10.0, 2: 40.0, 3: 5.0}
    after = {1: 10.5, 3: 5.25, 4: 0.5}
    assert cpu_spent(before, after) == 1.25
    assert cpu_spent(before, {}) == 0


def test_cpu_by_pid_reads_live_processes_and_skips_gone_ones():
    seconds = cpu_by_pid([os.getpid(), 2**22 + 1])
    assert list(seconds) == [os.getpid()]
    assert seconds[os.getpid()] >= 0


def notify_steps(masters: dict[str, tuple[float, float]], rates=(10, 50, 100), seconds=10.0) -> list[dict]:
    """Notify steps whose masters spend `idle` CPU s/s plus `us` µs per accepted notification."""
    return [
        step(
            "rate",
            rate,
            40,
            failed=0,
            new_redis_per_request=0.0,
            new_sentinel_per_request=0.0,
            accepted=rate * seconds,
            seconds=seconds,
            master_cpu_s={m: (idle + rate * us / 1e6) * seconds for m, (idle, us) in masters.items()},
        )
        for rate in rates
    ]


def test_a_masters_cost_per_event_leaves_its_idle_work_out_and_says_what_one_master_holds():
    cost = report.master_cost(notify_steps({"redis1": (0.01, 40.0)}), "accepted")
    assert cost["fitted"]
    assert cost["masters"] == 1
    assert cost["us_per_event"] == {"redis1": 40.0}
    assert cost["one_master_per_s"] == cost["shards_per_s"] == 25_000


def test_shards_hold_what_their_busiest_master_allows_one_master_what_all_of_them_spend():
    cost = report.master_cost(notify_steps({"redis1": (0.01, 30.0), "redis3": (0.02, 10.0)}), "accepted")
    assert cost["us_per_event"] == {"redis1": 30.0, "redis3": 10.0}
    assert cost["one_master_per_s"] == 25_000  # 40 µs on one core
    assert cost["shards_per_s"] == 33_333  # redis1's 30 µs: the busier shard saturates first


def test_a_master_the_events_do_not_reach_costs_nothing_per_event_and_leaves_the_busiest_as_the_limit():
    steps = notify_steps({"redis1": (0.01, 30.0), "redis3": (0.003, 0.0)})
    for number, each in enumerate(steps):  # its idle work wobbles down a little as the rate grows
        each["master_cpu_s"]["redis3"] -= 0.001 * number
    cost = report.master_cost(steps, "accepted")
    assert cost["us_per_event"] == {"redis1": 30.0, "redis3": 0.0}
    assert cost["one_master_per_s"] == cost["shards_per_s"] == 33_333


def test_a_single_rate_counts_the_idle_work_too_and_says_it_was_not_fitted():
    cost = report.master_cost(notify_steps({"redis1": (0.01, 40.0)}, rates=(10,)), "accepted")
    assert not cost["fitted"]
    assert cost["us_per_event"] == {"redis1": 1040.0}  # 10 ms/s of idle work over 10 events/s
    assert report.master_cost([{"accepted": 0, "seconds": 10.0, "master_cpu_s": {"redis1": 0.1}}], "accepted") is None
    single = notify_steps({"redis1": (0.01, 40.0)}, rates=(10,))
    results = {
        **RESULTS,
        "daphne": {**RESULTS["daphne"], "notify": single},
        "raw": {**RESULTS["raw"], "notify": single},
    }
    rows = {name: (project, raw) for name, project, raw in report.summary(results, "daphne")}
    assert rows["Redis masters' CPU per notification, µs (one rate: idle work included)"] == (1040.0, 1040.0)


def test_the_summary_quotes_the_masters_cost_and_a_shards_row_only_with_several_masters():
    one = notify_steps({"redis1": (0.01, 40.0)})
    two = notify_steps({"redis1": (0.01, 30.0), "redis3": (0.0, 10.0)})
    results = {**RESULTS, "daphne": {**RESULTS["daphne"], "notify": one}, "raw": {**RESULTS["raw"], "notify": one}}
    rows = {name: (project, raw) for name, project, raw in report.summary(results, "daphne")}
    assert rows["Redis masters' CPU per notification, µs"] == (40.0, 40.0)
    assert rows["notifications/s one Redis master holds (its core at 100 %)"] == (25_000, 25_000)
    assert not [name for name in rows if "shards hold" in name or "each master" in name]
    for step_ in two:  # 6 commands per notification on redis1, 4 on redis3
        step_["master_commands"] = {"redis1": 6 * step_["accepted"], "redis3": 4 * step_["accepted"]}
    results["daphne"]["notify"] = results["raw"]["notify"] = two
    rows = {name: (project, raw) for name, project, raw in report.summary(results, "daphne")}
    assert rows["notifications/s these 2 shards hold (the busiest master at 100 %)"] == (33_333, 33_333)
    # How the work split: each master's share, as the busiest master's figure comes from it.
    assert rows["Redis CPU per notification, µs, each master"] == ("redis1 30 · redis3 10",) * 2
    assert rows["Redis commands per notification, each master"] == ("redis1 6 · redis3 4",) * 2
    assert "| Redis commands per notification, each master | redis1 6 · redis3 4 | redis1 6 · redis3 4 | — |" in (
        " ".join(report.table(results).split())
    )


def test_made_users_are_read_off_the_shells_output_and_fewer_than_asked_is_an_error():
    commands = []

    def run(command: str) -> str:
        commands.append(command)
        return "Warning: something\nsession abc123 7\nsession def456 9\n"

    assert made_users(run, "bench-", 2) == [("abc123", 7), ("def456", 9)]
    # The script sent is Python that makes users bench-0 and bench-1, each with a session.
    script = base64.b64decode(commands[0].split()[1]).decode()
    compile(script, "<shell>", "exec")
    assert "range(2)" in script, script
    assert 'username=f"bench-{n}"' in script, script
    with pytest.raises(RuntimeError, match=r"3 users bench-\.\.\. asked, 2 made"):
        made_users(run, "bench-", 3)
