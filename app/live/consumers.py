import asyncio
import logging

from django.conf import settings

from realtime.consumers import AppConsumer
from realtime.loops import per_loop

log = logging.getLogger(__name__)


class Batches:
    """The pending updates of every /ws/live/ socket of one event loop, flushed together.

    The first update after a quiet spell arms one timer for the whole process;
    when it fires every socket with updates gets them as one frame, and the
    timer is armed again only by the next update. A quiet process wakes for
    nothing, where one timer per socket fired every interval whether or not
    anything was published.
    """

    def __init__(self) -> None:
        self.pending: dict[LiveConsumer, list[dict]] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.sending: set[asyncio.Task] = set()

    def add(self, consumer: "LiveConsumer", update: dict) -> None:
        self.pending.setdefault(consumer, []).append(update)
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(settings.LIVE_BATCH_INTERVAL, self._flush)

    def discard(self, consumer: "LiveConsumer") -> None:
        self.pending.pop(consumer, None)

    def _flush(self) -> None:
        self.timer = None
        due, self.pending = self.pending, {}
        task = asyncio.get_running_loop().create_task(self._send(due))
        self.sending.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self.sending.discard)

    @staticmethod
    async def _send(due: dict["LiveConsumer", list[dict]]) -> None:
        for consumer, updates in due.items():
            try:
                await consumer.send_json({"type": "batch", "updates": updates})
            except Exception:
                # One socket's failure (closed meanwhile) never costs the others their batch.
                log.warning("live batch not sent", exc_info=True)


# This event loop's batches (one per daphne process; tests run several loops).
batches = per_loop(Batches)


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

    async def on_connect(self) -> None:
        await self.join(settings.LIVE_GROUP)

    async def on_disconnect(self) -> None:
        batches().discard(self)

    async def live_tick(self, event: dict) -> None:
        batches().add(self, event["update"])
