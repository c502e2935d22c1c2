"""The workloads, each run against the project's pool on each ASGI server, then the raw baseline's, in one run.

broadcast  sockets stepped up at 1 broadcast/s until p95 delivery exceeds the
           bound or any update is lost
rate       at a fixed socket count, the broadcast rate stepped up, same criterion
notify     POST /api/notifications/ (raw: its GET) -> the user's socket, to 20
           users in turn, stepped rates: p95 post-to-receive, non-2xx answers,
           new Redis and Sentinel connections per request
idle       the pool's CPU with no socket and with N idle ones, and its memory
           (PSS) per socket
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from urllib.parse import quote

from bench.load import Fleet, Requests, Site, Sockets, Window, client_cpu, made_users, percentile
from bench.pools import Pool, asgi_servers, cpu_by_pid, cpu_spent, pss_kib, role_default

BOUND_MS = 250  # p95 delivery of a broadcast
CALM_SECONDS = 5  # after closing a workload's sockets, before the next one opens its own
NOTIFY_BOUND_MS = 100  # p95 POST -> socket
WORKLOADS = ("idle", "broadcast", "rate", "notify")
STEPPED = ("broadcast", "rate", "notify")


@dataclass
class Settings:
    socket_steps: list[int] = field(default_factory=lambda: [250, 500, 1000, 2000, 4000, 8000])
    rate_sockets: int = 1000
    rate_steps: list[float] = field(default_factory=lambda: [1, 2, 5, 10, 20, 50, 100, 200])
    notify_steps: list[float] = field(default_factory=lambda: [10, 25, 50, 100, 200, 300, 500])
    notify_users: int = 20  # the notifications' users, in turn: enough for their groups to spread over shards
    idle_sockets: int = 1000
    seconds: float = 10  # each measured step
    workloads: tuple[str, ...] = WORKLOADS
    servers: tuple[str, ...] = field(default_factory=asgi_servers)  # the project's pool on each, in turn

    def max_sockets(self) -> int:
        return max(*self.socket_steps, self.rate_sockets, self.idle_sockets)


SMOKE = Settings(
    socket_steps=[10, 20],
    rate_sockets=10,
    rate_steps=[1, 5],
    notify_steps=[5],
    notify_users=2,
    idle_sockets=10,
    seconds=2,
)


def sources_needed(settings: Settings) -> int:
    """Client addresses for the largest socket count within nginx's per-address limit (with headroom)."""
    per_address = int(role_default("nginx", "nginx_connections_per_ip") * 0.9)
    return math.ceil(settings.max_sockets() / per_address)


def held(step: dict, bound_ms: float) -> bool:
    """Nothing lost, refused or failed, and p95 within the bound."""
    if step["lost"] or step.get("failed") or step.get("refused"):
        return False
    return step["p95_ms"] is not None and step["p95_ms"] <= bound_ms


async def _drain(fleet: Fleet, expected: int, seconds: float = 5) -> None:
    """Wait for the last frames in flight (until all arrived, or `seconds`)."""
    deadline = time.monotonic() + seconds
    while await fleet.received() < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


async def _broadcast_step(pool, measure, fleet: Fleet, rate: float, seconds: float, marker: str) -> dict:
    count = max(1, round(rate * seconds))
    sockets = len(fleet)
    await fleet.window(marker)

    async def publish():
        published = await asyncio.to_thread(pool.publish, rate, count, marker)
        await _drain(fleet, published * sockets)
        return published

    published, cost = await measure.around(publish, fleet.pids())
    window = Window(marker, await fleet.take())
    step = {"sockets": sockets, "rate": rate, "published": published, **window.summary(published * sockets)}
    step["closed"], step["refused"] = fleet.closed, dict(fleet.refused)
    step.update(cost)
    delivered = max(1, step["received"])
    step["pool_cpu_us_per_msg"] = round(cost["pool_cpu_s"] * 1e6 / delivered, 1)
    step["stack_cpu_us_per_msg"] = round(cost["stack_cpu_s"] * 1e6 / delivered, 1)
    return step


async def broadcast(pool, measure, site, sources, settings: Settings, report) -> list[dict]:
    fleet, steps = Fleet(site, "/ws/live/", sources), []
    try:
        for count in settings.socket_steps:
            await fleet.grow(count)
            step = await _broadcast_step(pool, measure, fleet, 1, settings.seconds, f"B{count}")
            steps.append(step)
            report(step)
            if not held(step, BOUND_MS):
                break
    finally:
        await fleet.close()
        await asyncio.sleep(CALM_SECONDS)
    return steps


async def rate(pool, measure, site, sources, settings: Settings, report) -> list[dict]:
    fleet, steps = Fleet(site, "/ws/live/", sources), []
    try:
        await fleet.grow(settings.rate_sockets)
        for per_second in settings.rate_steps:
            marker = f"R{per_second:g}".replace(".", "_")
            step = await _broadcast_step(pool, measure, fleet, per_second, settings.seconds, marker)
            steps.append(step)
            report(step)
            if not held(step, BOUND_MS):
                break
    finally:
        await fleet.close()
        await asyncio.sleep(CALM_SECONDS)
    return steps


class RedisCounters:
    """What the Redis masters and every Sentinel say of themselves (INFO): connections accepted since they
    started, and each master's CPU seconds (all its threads) and commands processed."""

    def __init__(self, stack, secrets):
        self.stack, self.secrets = stack, secrets
        self.hosts = [h.name for h in stack.topology.group("redis")]

    def _info(self, name: str, port: int, password: str) -> dict[str, str]:
        out = self.stack.run(
            name, f"REDISCLI_AUTH={password} redis-cli -h {self.stack.address(name)} -p {port} --no-auth-warning INFO"
        ).stdout
        return dict(line.split(":", 1) for line in out.splitlines() if ":" in line and not line.startswith("#"))

    def read(self) -> dict:
        redis_port = role_default("blueprint", "redis_port")
        sentinel_port = role_default("blueprint", "redis_sentinel_port")
        redis = {n: self._info(n, redis_port, self.secrets["redis_password"]) for n in self.hosts}
        masters = {n: info for n, info in redis.items() if info.get("role") == "master"}
        sentinels = [self._info(n, sentinel_port, self.secrets["redis_sentinel_password"]) for n in self.hosts]
        return {
            "redis": sum(int(info["total_connections_received"]) for info in masters.values()),
            "sentinel": sum(int(info["total_connections_received"]) for info in sentinels),
            "masters": {
                n: {
                    "cpu_s": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
                    "commands": int(info["total_commands_processed"]),
                }
                for n, info in masters.items()
            },
        }

    @staticmethod
    def spent(before: dict, after: dict) -> dict:
        """Between two readings: new connections, and per master (a master in both) CPU seconds and commands."""
        masters = [n for n in after["masters"] if n in before["masters"]]
        return {
            "new_redis": after["redis"] - before["redis"],
            "new_sentinel": after["sentinel"] - before["sentinel"],
            "master_cpu_s": {
                n: round(after["masters"][n]["cpu_s"] - before["masters"][n]["cpu_s"], 4) for n in masters
            },
            "master_commands": {n: after["masters"][n]["commands"] - before["masters"][n]["commands"] for n in masters},
        }


class Measure:
    """Runs a step while reading the pool's, the whole stack's and the client's CPU around it, and the Redis
    masters' own counters (INFO: CPU seconds, commands, connections accepted; the Sentinels' connections)."""

    def __init__(self, pool: Pool, counters: RedisCounters):
        self.pool, self.counters = pool, counters

    async def around(self, action, client_workers: list[int] = ()) -> tuple[object, dict]:
        redis_before = await asyncio.to_thread(self.counters.read)
        pool_pids, stack_pids = await asyncio.to_thread(lambda: (self.pool.pids(), self.pool.replica_pids()))
        before = await asyncio.to_thread(lambda: (cpu_by_pid(pool_pids), cpu_by_pid(stack_pids)))
        started = time.monotonic()
        with client_cpu(client_workers) as client:
            result = await action()
        seconds = time.monotonic() - started
        # Processes started meanwhile count whole; one that ended meanwhile (the publisher) is not read (cpu_spent).
        stack_pids = sorted({*stack_pids, *await asyncio.to_thread(self.pool.replica_pids)})
        after = await asyncio.to_thread(lambda: (cpu_by_pid(pool_pids), cpu_by_pid(stack_pids)))
        redis_after = await asyncio.to_thread(self.counters.read)
        return result, {
            "seconds": round(seconds, 1),
            "pool_processes": len(pool_pids),
            "pool_cpu_s": round(cpu_spent(before[0], after[0]), 2),
            "stack_cpu_s": round(cpu_spent(before[1], after[1]), 2),
            "client_cpu_pct": round(100 * client["seconds"] / seconds, 1),
            **RedisCounters.spent(redis_before, redis_after),
        }


async def notify(pool, measure, site, sources, settings: Settings, report, users: list[tuple[str, int]]) -> list[dict]:
    """The notifications go to `users` (session, id) in turn, one socket each: on a sharded layer their groups
    hash over every shard, as many users' do."""
    raw = pool.kind == "raw"
    sockets = [
        Sockets(
            replace(site, session=session, user_id=user_id),
            f"/ws/notifications/?user={user_id}" if raw else "/ws/notifications/",
            sources[i % len(sources) :][:1],
            cookie=not raw,
        )
        for i, (session, user_id) in enumerate(users)
    ]
    steps = []
    try:
        await asyncio.gather(*(each.grow(1) for each in sockets))
        for per_second in settings.notify_steps:
            marker, received = f"N{per_second:g}", {}

            def on_frame(frame, now, marker=marker, received=received):
                message = json.loads(frame)
                text = message.get("message", "") if message.get("type") == "notification" else ""
                if text.startswith(marker + " "):
                    received.setdefault(int(text.split()[1]), now)

            for each in sockets:
                each.on_frame = on_frame

            async def request(client, i, marker=marker):
                user_id = users[i % len(users)][1]
                if raw:
                    return await client.get(f"/ws/raw-notify/?user={user_id}&message={quote(f'{marker} {i}')}")
                return await client.post(
                    "/api/notifications/",
                    json={"user_id": user_id, "message": f"{marker} {i}"},
                    headers={"Authorization": f"Bearer {site.token}"},
                )

            count = max(1, round(per_second * settings.seconds))

            async def run(count=count, received=received, per_second=per_second, request=request):
                sent, statuses = await Requests(site, sources).run(per_second, count, request)
                deadline = time.monotonic() + 5
                while len(received) < sum(n for s, n in statuses.items() if s in (200, 202)):
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                return sent, statuses

            (sent, statuses), cost = await measure.around(run)
            latencies = [received[i] - sent[i] for i in received if i in sent]
            failed = sum(n for status, n in statuses.items() if status not in (200, 202))
            step = {
                "rate": per_second,
                "requests": count,
                "failed": failed,
                "statuses": {str(k): v for k, v in statuses.items()},
                "received": len(latencies),
                "lost": count - failed - len(latencies),
                "p50_ms": _ms(percentile(latencies, 0.5)),
                "p95_ms": _ms(percentile(latencies, 0.95)),
                "p99_ms": _ms(percentile(latencies, 0.99)),
                "accepted": count - failed,
                "new_redis_per_request": round(cost.pop("new_redis") / count, 2),
                "new_sentinel_per_request": round(cost.pop("new_sentinel") / count, 2),
                **cost,
            }
            steps.append(step)
            report(step)
            if not held(step, NOTIFY_BOUND_MS):
                break
    finally:
        await asyncio.gather(*(each.close() for each in sockets))
        await asyncio.sleep(CALM_SECONDS)
    return steps


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)


async def idle(pool, site, sources, settings: Settings, report) -> dict:
    """The pool's CPU (% of one core) with no socket and with N idle ones; PSS per socket, from fresh processes."""

    async def cpu_percent() -> float:
        pids = await asyncio.to_thread(pool.pids)
        before, started = cpu_by_pid(pids), time.monotonic()
        await asyncio.sleep(settings.seconds)
        return round(100 * cpu_spent(before, cpu_by_pid(pids)) / (time.monotonic() - started), 2)

    await asyncio.to_thread(pool.restart)
    await asyncio.sleep(CALM_SECONDS)
    pss_before = await asyncio.to_thread(lambda: pss_kib(pool.pids()))
    empty = await cpu_percent()
    sockets = Sockets(site, "/ws/live/", sources)
    try:
        await sockets.grow(settings.idle_sockets)
        await asyncio.sleep(2)
        loaded = await cpu_percent()
        pss_after = await asyncio.to_thread(lambda: pss_kib(pool.pids()))
        opened, refused = len(sockets), dict(sockets.refused)
    finally:
        await sockets.close()
        await asyncio.sleep(CALM_SECONDS)
    figures = {
        "sockets": opened,
        "refused": refused,
        "cpu_pct_no_socket": empty,
        "cpu_pct_idle_sockets": loaded,
        "pss_kib_no_socket": pss_before,
        "pss_kib_with_sockets": pss_after,
        "kib_per_socket": round((pss_after - pss_before) / max(1, opened), 1),
    }
    report(figures)
    return figures


async def measure_pool(
    pool, site, sources, settings: Settings, counters: RedisCounters, users: list[tuple[str, int]], say
) -> dict:
    """Every workload against what runs on the pool now."""
    measure = Measure(pool, counters)
    label = "raw" if pool.kind == "raw" else "/".join(sorted(pool.servers()))

    def reporter(workload):
        return lambda step: say(f"{label:7} {workload:9} " + " ".join(f"{k}={v}" for k, v in step.items()))

    workloads = {
        "idle": lambda: idle(pool, site, sources, settings, reporter("idle")),
        "broadcast": lambda: broadcast(pool, measure, site, sources, settings, reporter("broadcast")),
        "rate": lambda: rate(pool, measure, site, sources, settings, reporter("rate")),
        "notify": lambda: notify(pool, measure, site, sources, settings, reporter("notify"), users),
    }
    return {name: await workloads[name]() for name in WORKLOADS if name in settings.workloads}


async def run(stack, secrets, site: Site, sources, settings: Settings, say=print) -> dict:
    """The project's pool on each server of `settings.servers` (the one it runs now first), then the raw
    baseline on the same ports; the instances back in service at the end, on the inventory's server."""
    pool = Pool(stack, secrets)
    counters = RedisCounters(stack, secrets)
    running = await asyncio.to_thread(pool.servers)
    servers = sorted(settings.servers, key=lambda server: server not in running)
    results = {
        "settings": asdict(settings),
        "servers": servers,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    http = stack.topology.group("http")[0].name

    def on_http(command: str) -> str:
        done = stack.run(http, command, 120)
        return done.stdout + done.stderr

    users = await asyncio.to_thread(made_users, on_http, "bench-", settings.notify_users)
    say("bench: installing the raw baseline's server on the ws hosts")
    await asyncio.to_thread(pool.install)
    switched = False
    try:
        for server in servers:
            if {server} != running:
                say(f"bench: the ws pool's instances onto {server} (site.yml --tags ws)")
                switched = True  # even if the switch fails half-way: back to the inventory's after
                await asyncio.to_thread(pool.use_server, server)
                running = {server}
            results[server] = await measure_pool(pool, site, sources, settings, counters, users, say)
        say("bench: the raw baseline in place of the project's instances (same ports)")
        await asyncio.to_thread(pool.use_raw)
        results["raw"] = await measure_pool(pool, site, sources, settings, counters, users, say)
    finally:
        await asyncio.to_thread(pool.restore)
        if switched:
            say("bench: the ws pool's instances back on the inventory's server (site.yml --tags ws)")
            await asyncio.to_thread(pool.use_server, None)
        say("bench: the project's instances back in service")
    return results
