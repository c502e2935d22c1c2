"""The raw baseline: about the least a WebSocket fan-out pool can do, to measure the project against.

One process per port, started by `./stack bench` on the ws hosts in place of the
daphne instances (same ports, so the same nginx, TLS, firewall and client):

  serve    every socket on /ws/live/ gets each message of the Redis channel
           LIVE as a {"type": "batch"} frame, at once (no batching, no limits,
           no auth); a socket on /ws/notifications/?user=N gets the messages of
           USER + N; GET /ws/raw-notify/?user=N&message=M publishes one (202)
  publish  ticks to LIVE at a fixed rate, shaped like the app's (symbol, price, ts)

Redis is the stack's own: the master named by Sentinel, with the stack's passwords
(environment: REDIS_PASSWORD, SENTINEL_PASSWORD). Never installed by site.yml.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from datetime import UTC, datetime
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from redis.asyncio.sentinel import Sentinel

LIVE = "bench:live"
USER = "bench:user:"
# As the project's pools run: no per-message compression. The bench's client offers it, as
# browsers do; websockets accepts it by default, and a broadcast would then be compressed once
# per socket, a cost the project's pools never pay (runs before 2026-12-07 had it).
SERVER_OPTIONS = {"max_size": 64 * 1024, "compression": None}


def master(args) -> object:
    sentinels = [(address, args.sentinel_port) for address in args.sentinels.split(",")]
    sentinel = Sentinel(
        sentinels,
        sentinel_kwargs={"password": os.environ.get("SENTINEL_PASSWORD"), "socket_timeout": 1},
        password=os.environ.get("REDIS_PASSWORD"),
    )
    return sentinel.master_for(args.master)


async def serve(args) -> None:
    from websockets.asyncio.server import broadcast
    from websockets.asyncio.server import serve as ws_serve

    redis = master(args)
    live, users = set(), {}

    async def handler(ws) -> None:
        query = parse_qs(urlsplit(ws.request.path).query)
        user = query.get("user", [None])[0]
        group = users.setdefault(user, set()) if ws.request.path.startswith("/ws/notifications/") else live
        group.add(ws)
        try:
            async for _ in ws:  # nothing is answered; reading sees the close
                pass
        finally:
            group.discard(ws)

    async def notify_endpoint(connection, request):
        if not request.path.startswith("/ws/raw-notify/"):
            return None  # a WebSocket handshake
        query = parse_qs(urlsplit(request.path).query)
        frame = json.dumps({"type": "notification", "message": query["message"][0]})
        await redis.publish(USER + query["user"][0], frame)
        return connection.respond(HTTPStatus.ACCEPTED, "accepted\n")

    async def relay() -> None:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(LIVE)
        await pubsub.psubscribe(USER + "*")
        async for message in pubsub.listen():
            data = message["data"].decode()
            if message["channel"] == LIVE.encode():
                broadcast(live, '{"type": "batch", "updates": [' + data + "]}")
            else:
                broadcast(users.get(message["channel"].decode()[len(USER) :], ()), data)

    async with ws_serve(handler, args.bind, args.port, process_request=notify_endpoint, **SERVER_OPTIONS):
        await relay()


async def publish(args) -> None:
    redis = master(args)
    await redis.ping()  # connected before the first tick, as the project's publisher is
    interval, next_at = 1.0 / args.rate, asyncio.get_running_loop().time()
    for _ in range(args.count):
        update = {"symbol": args.symbol, "price": 100.0, "ts": datetime.now(UTC).isoformat()}
        await redis.publish(LIVE, json.dumps(update))
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - asyncio.get_running_loop().time()))
    print(f"published {args.count} ticks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentinels", required=True, help="comma-separated Sentinel addresses")
    parser.add_argument("--sentinel-port", type=int, required=True)
    parser.add_argument("--master", required=True, help="the master's name in Sentinel")
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("serve")
    server.add_argument("--bind", required=True)
    server.add_argument("--port", type=int, required=True)
    publisher = commands.add_parser("publish")
    publisher.add_argument("--rate", type=float, required=True)
    publisher.add_argument("--count", type=int, required=True)
    publisher.add_argument("--symbol", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args) if args.command == "serve" else publish(args))


if __name__ == "__main__":
    main()
