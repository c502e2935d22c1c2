import asyncio

from django.conf import settings

from realtime.consumers import AppConsumer


class LiveConsumer(AppConsumer):
    """/ws/live/: the broadcast price feed, batched.

    Ticks arriving from the group are buffered and sent as one
    {"type": "batch", "updates": [...]} frame per LIVE_BATCH_INTERVAL_MS;
    an interval with no ticks sends nothing. Public data: no login needed
    (nginx limits connections per address; logged-in users also count
    against their own limit).
    """

    endpoint = "live"
    login_required = False
    flusher: asyncio.Task | None = None

    async def on_connect(self) -> None:
        self.buffer: list[dict] = []
        await self.join(settings.LIVE_GROUP)
        self.flusher = asyncio.create_task(self._flush_every(settings.LIVE_BATCH_INTERVAL))

    async def on_disconnect(self) -> None:
        if self.flusher:
            self.flusher.cancel()

    async def live_tick(self, event: dict) -> None:
        self.buffer.append(event["update"])

    async def _flush_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.buffer:
                updates, self.buffer = self.buffer, []
                await self.send_json({"type": "batch", "updates": updates})
