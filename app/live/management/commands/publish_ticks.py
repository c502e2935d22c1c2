import asyncio
import time

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from live.ticks import event, ticks
from realtime.layer import group_send, round_trip


class Command(BaseCommand):
    help = "Publish simulated price ticks to every /ws/live/ socket at a fixed rate."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--rate", type=float, default=10.0, help="ticks per second (default 10)")
        parser.add_argument("--symbols", default="ACME,GLOBEX,INITECH,UMBRELLA", help="comma-separated symbols")
        parser.add_argument("--count", type=int, default=0, help="stop after this many ticks (0: never)")
        parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: never)")
        parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable feeds")

    def handle(self, *args, rate: float, symbols: str, count: int, duration: float, seed, **options) -> None:
        if rate <= 0:
            raise CommandError("--rate must be positive")
        names = [s.strip() for s in symbols.split(",") if s.strip()]
        if not names:
            raise CommandError("--symbols names no symbol")
        sent = async_to_sync(self.publish)(names, rate, count, duration, seed)
        self.stdout.write(f"published {sent} ticks")

    async def publish(self, symbols: list[str], rate: float, count: int, duration: float, seed) -> int:
        # Connected before the first tick: its timestamp must not carry the connection's setup.
        await round_trip()
        interval = 1.0 / rate
        started = time.monotonic()
        next_at = started
        sent = 0
        for update in ticks(symbols, seed):
            if (count and sent >= count) or (duration and time.monotonic() - started >= duration):
                break
            await group_send(settings.LIVE_GROUP, event(update))
            sent += 1
            # Fixed schedule, not sleep(interval): the rate holds even when a send is slow.
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        return sent
