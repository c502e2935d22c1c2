"""The channel layer sharded over several Sentinel-managed masters (topologies/sharded.yml).

channels_redis puts a group on the shard its name hashes to, and a daphne
process's inbox (its channel ``specific.<process>!``) on the shard that name
hashes to: a message reaches a socket through both. So each socket here is
placed by two shards, read off Redis itself (the group's one member names the
process), and the drills check every placement: everything reaches every
socket, and a failover of one shard's master leaves the traffic that touches
only the other shard untouched while the rest recovers as in the faults drills.
On the topology's host of both pools, a deploy's new environment reaches daphne as well as gunicorn.
`./stack test` runs this module on its own stack of that topology.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time

import httpx
import pytest
from channels_redis.utils import _consistent_hash

from bench.pools import role_default
from tests.replicas.conftest import (
    SENTINEL_PORT,
    TOPOLOGY,
    fact,
    first,
    master_address,
    names,
    open_ws,
    redis_cli,
)
from tests.replicas.test_blueprint_status import problems, settled
from tests.replicas.test_drills import (
    drill_users,
    post_notification,
    read_numbered,
    rejoined_as_replica,
    settle,
    wait_until,
)

# Each redis host's shard, as the topology's inventory gives it (redis_shard, else the blueprint's default).
SHARD_OF = {host.name: int(host.vars.get("redis_shard", fact("redis_shard"))) for host in TOPOLOGY.group("redis")}
SHARDS = sorted(set(SHARD_OF.values()))
# Users with one notification socket each: enough for every (group shard, inbox shard) placement.
USERS = 16
# Drill traffic: a notification to every user this often, for this long after the fault.
POST_EVERY = 1.0
TRAFFIC_AFTER_FAULT = 25.0

pytestmark = pytest.mark.skipif(len(SHARDS) < 2, reason="the topology has one channel-layer shard")


def shard_hosts(shard: int) -> list[str]:
    return [name for name, number in SHARD_OF.items() if number == shard]


@pytest.fixture(scope="module")
def masters(converged, hosts) -> list[str]:
    """The shards' master names, in the layer's order, as the app's environment has them."""
    env_file = role_default("app", "app_env_file")
    line = hosts[first("ws")].run("grep ^REDIS_SENTINEL_MASTER= %s", env_file).stdout.strip()
    names_ = line.split("=", 1)[1].strip("'").split(",")
    assert len(names_) == len(SHARDS), line
    return names_


def shard_master(hosts, secrets, stack, masters, shard: int) -> str:
    """The host the sentinels name as the shard's master (the first redis host's sentinel asked)."""
    address = master_address(hosts, secrets, names("redis")[0], masters[shard])
    return next(name for name in SHARD_OF if stack.address(name) == address)


def test_every_sentinel_watches_every_shard_and_each_shard_replicates_within_its_hosts(hosts, secrets, stack, masters):
    for shard, master in enumerate(masters):
        seen = {master_address(hosts, secrets, name, master) for name in SHARD_OF}
        assert len(seen) == 1, (master, seen)
        address = seen.pop()
        host = next(name for name in SHARD_OF if stack.address(name) == address)
        assert SHARD_OF[host] == shard, (master, host)
        fields = redis_cli(
            hosts[host], secrets["redis_sentinel_password"], "SENTINEL", "MASTER", master, port=SENTINEL_PORT
        ).stdout.split()
        state = dict(zip(fields[::2], fields[1::2], strict=False))
        assert state["num-other-sentinels"] == str(len(SHARD_OF) - 1), state
        assert state["num-slaves"] == str(len(shard_hosts(shard)) - 1), state
        assert state["quorum"] == str(len(SHARD_OF) // 2 + 1), state
        info = redis_cli(hosts[host], secrets["redis_password"], "INFO", "replication").stdout
        assert f"connected_slaves:{len(shard_hosts(shard)) - 1}" in info, info
    print(f"\nfigure: shards {dict(enumerate(masters))}, hosts {SHARD_OF}")

    # status.yml reads each shard on its own.
    _, table, output = settled(stack)
    assert table, output[-3000:]
    assert problems(table) == [], table
    for shard in range(len(masters)):
        assert any(re.match(rf"stack\s+one Redis master, shard {shard}\s+redis\d+$", row) for row in table), table
        assert any(re.match(rf"stack\s+sentinels agree, shard {shard}\s+\S+$", row) for row in table), table


def placement(hosts, secrets, stack, masters, user_id: int) -> tuple[int, int]:
    """(group shard, inbox shard) of the user's one notification socket, read off the group's master."""
    group = f"notifications_{user_id}"
    group_shard = _consistent_hash(group, len(masters))
    master = shard_master(hosts, secrets, stack, masters, group_shard)
    key = redis_cli(hosts[master], secrets["redis_password"], "--scan", "--pattern", f"*:group:{group}").stdout.split()
    assert len(key) == 1, key
    members = redis_cli(hosts[master], secrets["redis_password"], "ZRANGE", key[0], "0", "-1").stdout.split()
    assert len(members) == 1, (group, members)
    process = members[0][: members[0].index("!") + 1]
    return group_shard, _consistent_hash(process, len(masters))


class Users:
    """USERS users, one notification socket each, placed; numbered notifications posted to all of them."""

    def __init__(self, site, users: list[tuple[str, int]]):
        self.site, self.users = site, users
        self.sockets: list = []
        self.where: dict[int, tuple[int, int]] = {}
        self.posts: dict[tuple[int, int], dict] = {}
        self.received: dict[int, dict[int, float]] = {user_id: {} for _, user_id in users}
        self.closed: list[int] = []

    async def open(self, hosts, secrets, stack, masters) -> None:
        for session, _ in self.users:
            self.sockets.append(await open_ws({**self.site, "session": session}, "/ws/notifications/"))
        for _, user_id in self.users:
            self.where[user_id] = await asyncio.to_thread(placement, hosts, secrets, stack, masters, user_id)

    async def close(self) -> None:
        for ws in self.sockets:
            await ws.close()

    async def _read(self, user_id: int, ws) -> None:
        await read_numbered(ws, "shard", self.received[user_id], self.closed)

    async def _post(self, client, user_id: int, seq: int) -> None:
        sent = time.monotonic()
        status = await post_notification(client, self.site, user_id, f"shard {seq}")
        self.posts[user_id, seq] = {"sent": sent, "status": status, "answered": time.monotonic()}

    async def traffic(self, rounds: int, fault=None, fault_after: int = 3) -> float | None:
        """`rounds` rounds of one notification per user, POST_EVERY apart; `fault()` (in a thread) before
        round `fault_after`. Returns when the fault happened."""
        readers = [
            asyncio.create_task(self._read(uid, ws)) for (_, uid), ws in zip(self.users, self.sockets, strict=True)
        ]
        posts, faulted_at = [], None
        async with httpx.AsyncClient(base_url=self.site["base"], verify=self.site["ssl"], timeout=10) as client:
            for seq in range(rounds):
                if fault and seq == fault_after:
                    faulted_at = time.monotonic()
                    await asyncio.to_thread(fault)
                posts += [asyncio.create_task(self._post(client, uid, seq)) for _, uid in self.users]
                await asyncio.sleep(POST_EVERY)
            await settle(posts, readers)
        return faulted_at

    def delay(self, user_id: int, seq: int, since: str = "sent") -> float | None:
        """Seconds from the post's `sent` (or `answered`) to its arrival on the user's socket."""
        got = self.received[user_id].get(seq)
        return None if got is None else got - self.posts[user_id, seq][since]


# Restarts of the ws hosts' daphne instances allowed to get their inboxes onto every shard: each
# process's name is random, so with two processes and two shards each try covers both with odds
# of one half, and all of them failing has odds of 1 in 65,536.
INBOX_TRIES = 16
# Every daphne instance of a ws host restarted, then each one's /readyz answering (at most 30 s each).
RESTART_DAPHNE = """
systemctl restart 'daphne@*'
for unit in $(systemctl list-units --plain --no-legend 'daphne@*.service' | cut -d' ' -f1); do
    port=${{unit#daphne@}}; port=${{port%.service}}
    for _ in $(seq 60); do curl -sf -o /dev/null http://{address}:$port/readyz && continue 2; sleep 0.5; done
    echo "$unit is not ready 30 s after its restart"; exit 1
done
"""


@contextlib.asynccontextmanager
async def placed_users(site, hosts, secrets, stack, masters):
    """USERS users with a socket each, the daphne processes' inboxes spread over every shard: the
    instances are restarted (their names are random) until the sockets' placements show it."""
    users = Users(site, await asyncio.to_thread(drill_users, hosts, USERS))
    try:
        restarts = 0
        await users.open(hosts, secrets, stack, masters)
        while {inbox for _, inbox in users.where.values()} != set(range(len(masters))):
            if restarts == INBOX_TRIES:
                pytest.fail(f"after {restarts} restarts the daphne inboxes still sit on one shard: {users.where}")
            await users.close()
            users.sockets = []
            for ws_host in names("ws"):
                restarted = await asyncio.to_thread(
                    stack.run, ws_host, RESTART_DAPHNE.format(address=stack.address(ws_host)), 120
                )
                assert restarted.returncode == 0, restarted.stdout + restarted.stderr
            restarts += 1
            await users.open(hosts, secrets, stack, masters)
        print(f"\nfigure: shards: inboxes on every shard after {restarts} restart(s) of the daphne instances")
        yield users
    finally:
        await users.close()


async def test_notifications_order_updates_and_live_ticks_reach_every_socket_whatever_their_shards(
    site, hosts, secrets, stack, masters
):
    async with placed_users(site, hosts, secrets, stack, masters) as users:
        placements = sorted(set(users.where.values()))
        print(f"\nfigure: shards: {USERS} sockets placed (group shard, inbox shard): {placements}")
        # Groups hash to every shard, and the daphne processes' inboxes sit on every shard.
        assert {group for group, _ in placements} == set(range(len(masters))), users.where
        assert {inbox for _, inbox in placements} == set(range(len(masters))), users.where
        await users.traffic(rounds=2)
        missing = [(uid, seq) for (uid, seq), post in users.posts.items() if users.delay(uid, seq) is None]
        assert all(post["status"] == 202 for post in users.posts.values()), users.posts
        assert missing == [], (missing, users.where)

        # An order's status change reaches its owner, whichever shard holds the owner's group.
        readers = {uid: ws for (_, uid), ws in zip(users.users, users.sockets, strict=True)}
        changed = stack.run(
            first("http"),
            "channels-manage shell -c "
            + json.dumps(
                "from orders.models import Order; from orders.services import process_order;"
                " [print('order', process_order(Order.objects.create(owner_id=uid)).pk, uid)"
                f" for uid in {sorted(readers)}]"
            ),
            timeout=120,
        )
        assert changed.returncode == 0, changed.stderr
        orders = {
            int(uid): int(pk)
            for pk, uid in (line.split()[1:] for line in changed.stdout.splitlines() if line.startswith("order "))
        }
        assert len(orders) == len(readers), changed.stdout
        for uid, ws in readers.items():
            async with asyncio.timeout(10):
                while (message := json.loads(await ws.recv())).get(
                    "message"
                ) != f"Your order #{orders[uid]} has been processed":
                    pass
            assert message["type"] == "notification"

    # Live ticks go to one group, on one shard, and from it to every process's inbox.
    live = [await open_ws(site, "/ws/live/", session=False) for _ in range(8)]
    try:
        symbol = "SHRD"
        published = await asyncio.to_thread(
            stack.run, first("http"), f"channels-manage publish_ticks --rate 5 --count 10 --symbols {symbol}", 120
        )
        assert published.returncode == 0, published.stderr
        got = []
        for ws in live:
            async with asyncio.timeout(10):
                while not any(u.get("symbol") == symbol for u in json.loads(await ws.recv()).get("updates", [])):
                    pass
            got.append(True)
        assert len(got) == len(live)
    finally:
        for ws in live:
            await ws.close()


async def test_a_failover_of_one_shards_master_leaves_the_other_shards_traffic_untouched(
    site, hosts, secrets, stack, masters
):
    """SIGKILL of one shard's master under a notification a second to each user. The sockets whose
    group and process inbox are both on the other shards miss nothing and none of their posts is
    refused; the rest resume within 10 s, as the faults drills require of a single master; no
    socket closes.

    The HTTP pool is shared: until the first post for the failing shard runs out of its
    NOTIFY_SEND_TIMEOUT, those posts may hold every gunicorn thread and the others queue behind
    them. Then the shard is paused in that process (config/redis.py: bounded) and its posts are
    refused at once, but one every LAYER_SHARD_PAUSE, which tries it again. The untouched
    posts' time from sending is printed (before the pause: 5.1, 5.4 and 6.2 s at most in three
    runs with 15 of 16 sockets touched); the bound is on the layer's part: from the API's 202,
    each arrives within a second."""
    async with placed_users(site, hosts, secrets, stack, masters) as users:
        inboxes = {inbox for _, inbox in users.where.values()}
        # The victim: a shard that leaves some socket wholly on the others.
        victim_shard = next(
            (s for s in range(len(masters)) if any(g != s and i != s for g, i in users.where.values())), None
        )
        assert victim_shard is not None, f"no socket lies wholly off any one shard: {users.where}"
        untouched = [uid for uid, (g, i) in users.where.items() if g != victim_shard and i != victim_shard]
        touched = [uid for uid in users.where if uid not in untouched]
        victim = shard_master(hosts, secrets, stack, masters, victim_shard)
        others = {s: shard_master(hosts, secrets, stack, masters, s) for s in range(len(masters)) if s != victim_shard}
        faulted_at = await users.traffic(
            rounds=3 + int(TRAFFIC_AFTER_FAULT / POST_EVERY),
            fault=lambda: hosts[victim].run("systemctl kill -s KILL redis-server"),
        )
        open_after = sum(1 for ws in users.sockets if ws.state.name == "OPEN")

    def resumed(uid: int) -> float | None:
        after = [
            seq
            for (u, seq), post in users.posts.items()
            if u == uid and post["sent"] >= faulted_at and post["status"] == 202
        ]
        for n, seq in enumerate(after):
            if all(users.delay(uid, later) is not None for later in after[n:]):
                return users.received[uid][seq] - faulted_at
        return None

    untouched_delays = [users.delay(uid, seq) for (uid, seq) in users.posts if uid in untouched]
    arrived = sorted(d for d in untouched_delays if d is not None)
    after_202 = [users.delay(uid, seq, "answered") for (uid, seq) in users.posts if uid in untouched]
    untouched_statuses = [users.posts[uid, seq]["status"] for (uid, seq) in users.posts if uid in untouched]
    resumes = {uid: resumed(uid) for uid in touched}
    figure = {
        "victim": f"{masters[victim_shard]} on {victim}",
        "inbox_shards": sorted(inboxes),
        "untouched_sockets": len(untouched),
        "untouched_posts": len(untouched_delays),
        "untouched_lost": untouched_delays.count(None),
        "untouched_median": round(arrived[len(arrived) // 2], 3),
        "untouched_over_1s": sum(1 for d in arrived if d > 1),
        "untouched_slowest": round(arrived[-1], 2),
        "untouched_slowest_after_202": round(max(d for d in after_202 if d is not None), 3),
        "untouched_refused": [s for s in untouched_statuses if s != 202],
        "touched_sockets": len(touched),
        "touched_posts": sum(1 for uid, _ in users.posts if uid in touched),
        "touched_lost": sum(
            1
            for (uid, seq), post in users.posts.items()
            if uid in touched and post["status"] == 202 and users.delay(uid, seq) is None
        ),
        "touched_resumed_max": max((round(r, 1) for r in resumes.values() if r is not None), default=None),
        "touched_refused_503": sum(
            1 for (uid, _), post in users.posts.items() if uid in touched and post["status"] == 503
        ),
        "open_after": open_after,
        "closed": users.closed,
    }
    print(f"\nfigure: shard failover drill: {figure}")
    assert untouched, users.where
    assert figure["untouched_lost"] == 0, figure
    assert figure["untouched_refused"] == [], figure
    assert figure["untouched_slowest_after_202"] <= 1.0, figure
    assert all(r is not None and r <= 10 for r in resumes.values()), (resumes, figure)
    assert open_after == USERS, figure
    assert users.closed == [], figure
    # The other shards' masters never moved; the victim comes back as its new master's replica.
    for shard, host in others.items():
        assert shard_master(hosts, secrets, stack, masters, shard) == host
    assert shard_master(hosts, secrets, stack, masters, victim_shard) != victim
    assert await wait_until(lambda: rejoined_as_replica(hosts, secrets, victim), 90), victim


# A variable in the app's environment (app_extra_env) that deploy.yml writes, then takes out again.
PROBE = "BLUEPRINT_ENVIRONMENT_PROBE"
# Each gunicorn and daphne unit on a host: its main process, and whether that process's environment has PROBE.
SERVICES_ENVIRONMENT = f"""
for unit in gunicorn.service $(systemctl list-units --plain --no-legend 'daphne@*' | cut -d' ' -f1); do
    pid=$(systemctl show -p MainPID --value "$unit")
    echo "$unit $pid $(tr '\\0' '\\n' < /proc/$pid/environ | grep -c '^{PROBE}=')"
done
"""


def services_environment(stack, host: str) -> dict[str, tuple[str, bool]]:
    out = stack.run(host, SERVICES_ENVIRONMENT)
    assert out.returncode == 0, out.stdout + out.stderr
    units = {unit: (pid, count != "0") for unit, pid, count in (line.split() for line in out.stdout.splitlines())}
    assert "gunicorn.service" in units, units
    assert len(units) > 1, units
    return units


def test_a_host_of_both_pools_restarts_daphne_too_when_the_http_play_changed_the_environment(converged, stack):
    """deploy.yml with a changed environment, on this topology's host of both pools. The HTTP play
    writes the environment and restarts gunicorn; the WebSocket play finds it written, and daphne
    restarts only because the app role passes the change on (roles/app/tasks/carry.yml). Without
    that, adding a shard here left daphne on the old shard list and gunicorn on the new one: 64, then
    48, of 64 notifications posted after the deploy never arrived. deploy.yml then takes the change out."""
    shared = [name for name in names("http") if name in names("ws")]
    assert shared, "the topology has no host in both pools"
    host = shared[0]
    before = services_environment(stack, host)
    try:
        changed = stack.playbook("deploy.yml", "-e", json.dumps({"app_extra_env": {PROBE: "1"}}))
        assert changed.returncode == 0, changed.stdout[-6000:] + changed.stderr[-2000:]
        during = services_environment(stack, host)
    finally:
        back = stack.playbook("deploy.yml")
    print(f"\nfigure: environment change on {host}, a host of both pools: {before} -> {during}")
    assert during.keys() == before.keys(), (before, during)
    assert all(has for _, has in during.values()), during
    assert all(during[unit][0] != pid for unit, (pid, _) in before.items()), (before, during)
    assert back.returncode == 0, back.stdout[-6000:] + back.stderr[-2000:]
    assert not any(has for _, has in services_environment(stack, host).values())
