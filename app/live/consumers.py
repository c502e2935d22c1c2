import asyncio
import json
import logging

from channels.layers import get_channel_layer
from django.conf import settings

from ops.metrics import LAYER_ERRORS
from realtime.consumers import AppConsumer
from realtime.keeper import keeper
from realtime.loops import per_loop

log = logging.getLogger(__name__)


class Feed:
    """One process's membership of the live group, shared by all its /ws/live/ sockets.

    A broadcast is handled once per process: the process's own channel is the
    group's one member for all its sockets, one task reads it, and the updates
    of an interval go out as one frame, encoded once, to every socket. With a
    member per socket, every tick woke each socket's consumer, which took
    Channels' hop to Django's sync thread, kept a batch of its own and encoded
    its own frame: the burst's tail waited for all of that before it.

    A socket gets at most one frame per LIVE_BATCH_INTERVAL: an update after a
    quiet interval goes out at once and opens a window; the updates arriving
    within it go out together as one frame when it ends (one timer for the
    process, armed only by an update). A quiet process wakes for nothing, and
    a tick once a second is not held back by a window it does not need.

    The channel's membership is kept like a socket's (realtime/keeper.py): a
    Redis that lost it has it back within WS_STATE_REFRESH_SECONDS. With its
    last socket the process leaves the group, and the next socket joins again.
    """

    endpoint = "live"
    memberships = (settings.LIVE_GROUP,)
    slot_held = False
    released = False

    def __init__(self) -> None:
        self.sockets: set[LiveConsumer] = set()
        self.pending: list[dict] = []
        self.sent_at = float("-inf")  # loop time of the last frame
        self.timer: asyncio.TimerHandle | None = None
        self.sending: set[asyncio.Task] = set()  # batches being sent, group_discards
        self.channel_name: str | None = None
        self.started: asyncio.Task | None = None
        self.reader: asyncio.Task | None = None

    async def join(self, consumer: "LiveConsumer") -> None:
        """Subscribe `consumer`; the first one makes the process a member (Redis errors reach it)."""
        self.sockets.add(consumer)
        try:
            if self.started is None:
                self.started = asyncio.get_running_loop().create_task(self._start())
            await asyncio.shield(self.started)
        except BaseException:
            self.leave(consumer)
            raise

    def leave(self, consumer: "LiveConsumer") -> None:
        """Unsubscribe `consumer`; with the last one the process leaves the group until the next."""
        self.sockets.discard(consumer)
        if self.sockets or self.started is None:
            return
        started, self.started = self.started, None
        reader, self.reader = self.reader, None
        channel, self.channel_name = self.channel_name, None
        keeper().discard(self)
        for task in (started, reader):
            if task is not None and not task.done():
                task.cancel()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pending = []
        if channel is not None:
            self._hold(asyncio.get_running_loop().create_task(self._discard(channel)))

    async def _start(self) -> None:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(settings.LIVE_GROUP, channel)
        self.channel_name = channel
        self.reader = asyncio.get_running_loop().create_task(self._read(layer, channel))
        keeper().add(self)

    @staticmethod
    async def _discard(channel: str) -> None:
        try:
            await get_channel_layer().group_discard(settings.LIVE_GROUP, channel)
        except Exception:
            # The membership lapses by itself after the layer's group expiry.
            LAYER_ERRORS.labels("group_discard").inc()
            log.warning("live feed group_discard failed", exc_info=True)

    async def _read(self, layer, channel: str) -> None:
        while True:
            try:
                message = await layer.receive(channel)
            except Exception:
                if asyncio.current_task().cancelling():
                    raise  # stopping: whatever the layer raised on the way out
                # A failover or a lost master: the layer's connections retry; so does this.
                LAYER_ERRORS.labels("receive").inc()
                log.warning("live feed read failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if message.get("type") == "live.tick":
                self.add(message["update"])

    def _hold(self, task: asyncio.Task) -> None:
        self.sending.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self.sending.discard)

    def add(self, update: dict) -> None:
        self.pending.append(update)
        if self.timer is not None:
            return  # the window's frame is due: it carries this update too
        loop = asyncio.get_running_loop()
        wait = self.sent_at + settings.LIVE_BATCH_INTERVAL - loop.time()
        if wait <= 0:
            self._flush()  # a quiet interval before: at once, opening a window
        else:
            self.timer = loop.call_later(wait, self._flush)

    def _flush(self) -> None:
        self.timer = None
        self.sent_at = asyncio.get_running_loop().time()
        updates, self.pending = self.pending, []
        if not self.sockets:
            return
        frame = json.dumps({"type": "batch", "updates": updates})
        self._hold(asyncio.get_running_loop().create_task(self._send(frame, list(self.sockets))))

    @staticmethod
    async def _send(frame: str, sockets: list["LiveConsumer"]) -> None:
        for consumer in sockets:
            if consumer.released:
                continue
            try:
                await consumer.send(text_data=frame)
            except Exception:
                # One socket's failure (closed meanwhile) never costs the others their batch.
                log.warning("live batch not sent", exc_info=True)


# This event loop's feed: one per daphne process (tests run several loops).
feed = per_loop(Feed)


class LiveConsumer(AppConsumer):
    """/ws/live/: the broadcast price feed, batched.

    Ticks published to the live group arrive as {"type": "batch", "updates":
    [...]} frames, at most one per LIVE_BATCH_INTERVAL_MS: the first tick after
    a quiet interval at once, the ticks of the interval it opens together at
    its end; no tick, no frame. Public data: no login needed
    (nginx limits connections per address; logged-in users also count
    against their own limit).
    """

    endpoint = "live"
    login_required = False
    # Its sockets' frames come from the process's feed: no socket reads a channel of its own.
    channel_layer_alias = None

    async def on_connect(self) -> None:
        await feed().join(self)

    async def on_disconnect(self) -> None:
        feed().leave(self)
