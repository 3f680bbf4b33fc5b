"""Patterns on top of the SDK: a worker pool over a queue, and idempotent consumers.

::

    async def handle(msg): ...                       # raise to reject (or requeue)

    await mqroute.run_worker(conn, "tasks", handle, concurrency=8)   # until SIGINT/SIGTERM

    seen = mqroute.ProcessedIds("processed.db")      # effectively exactly-once
                                                     # (or any store: process_once(msg, store))
    async for msg in messages:
        async with seen.once(msg) as first_time:
            if first_time:
                charge(msg)                          # side effects happen once per message_id
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

import anyio
import anyio.abc
import attrs

from ..errors import UsageError
from ..model import Table
from .connection import Connection
from .consumer import Consumer
from .message import Message

log = logging.getLogger("mqroute.worker")


async def run_worker(
    conn: Connection,
    queue: str,
    handler: Callable[[Message], Awaitable[None]],
    *,
    concurrency: int = 1,
    prefetch: int | None = None,
    requeue_on_error: bool = False,
    stop: anyio.Event | None = None,
    handle_signals: bool | None = None,
    until_idle: bool = False,
) -> int:
    """Run ``handler`` over ``queue`` with ``concurrency`` tasks until stopped; returns how many
    messages were handled successfully.

    A message is acked when its handler returns and rejected (requeued if
    ``requeue_on_error``) when it raises; the failure is logged with the message id, the
    attempt and what became of the message, and the worker goes on.

    It stops when ``stop`` is set, on SIGINT/SIGTERM if it handles signals, or with
    ``until_idle`` once the queue holds nothing ready or delayed and this worker nothing in
    hand (for tests and batch jobs: no poll loop). Stopping is graceful: no new message is
    taken, those in flight finish and are settled, and whatever the broker had already sent
    ahead is released (no delivery attempt counted).

    ``handle_signals`` (default: only when the worker owns the process, that is in the main
    thread with no SIGTERM handler installed by anyone else) turns SIGINT/SIGTERM into a
    graceful stop. Inside a web framework's lifespan, which has its own handlers, pass
    ``stop`` instead.
    """
    if concurrency < 1:
        raise UsageError("concurrency must be at least 1")
    if stop is None:
        stop = anyio.Event()
    if handle_signals is None:
        handle_signals = _owns_the_process()
    info = await conn.declare_queue(queue, passive=True)
    fate = _Fate(info.arguments, requeue_on_error)
    handled = 0
    busy = 0  # messages taken from the consumer and not yet settled
    taken = 0  # messages taken from the consumer, ever
    send, receive = anyio.create_memory_object_stream[Message](0)
    inboxes = [receive.clone() for _ in range(concurrency)]
    receive.close()
    settled = anyio.Event()  # set whenever a message is settled, for until_idle

    async def work(inbox: anyio.abc.ObjectReceiveStream[Message]) -> None:
        nonlocal handled, busy, settled
        async with inbox:
            async for msg in inbox:
                try:
                    async with msg.process(requeue=requeue_on_error):
                        await handler(msg)
                except Exception:
                    log.exception(
                        "handler failed on message %s (attempt %d) from %r; %s",
                        msg.message_id or f"with delivery tag {msg.delivery_tag}",
                        _attempt(msg),
                        queue,
                        fate.after_failure(_attempt(msg)),
                    )
                else:
                    handled += 1
                finally:
                    busy -= 1
                    settled.set()
                    settled = anyio.Event()

    async def watch_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for received in signals:
                log.info("%s: stopping the worker on %r gracefully", received.name, queue)
                stop.set()
                return

    async def watch_idle(messages: Consumer) -> None:
        while True:
            if busy == 0 and messages.received == taken:
                before = taken
                # Deliveries made before this answer arrive before it, in order: if none came
                # meanwhile, the queue's counts are the truth.
                now = await conn.declare_queue(queue, passive=True)
                if busy == 0 and messages.received == before:
                    if now.message_count == 0 and now.delayed_count == 0:
                        stop.set()
                        return
                    with anyio.move_on_after(IDLE_POLL):  # ready for others, or delayed
                        await settled.wait()
                    continue
            if busy or messages.received > taken:  # no await since the check: a settle comes
                await settled.wait()

    async with anyio.create_task_group() as tg:
        if handle_signals:
            tg.start_soon(watch_signals)
        async with anyio.create_task_group() as workers:
            for inbox in inboxes:
                workers.start_soon(work, inbox)
            async with send, conn.consume(queue, prefetch=prefetch or concurrency) as messages:
                async with anyio.create_task_group() as feeding:

                    async def feed() -> None:
                        nonlocal busy, taken
                        async for msg in messages:
                            busy += 1
                            taken += 1
                            try:
                                await send.send(msg)  # waits for a free worker
                            except anyio.get_cancelled_exc_class():
                                busy -= 1
                                with anyio.CancelScope(shield=True):
                                    await msg.release()  # taken, never started
                                raise
                        feeding.cancel_scope.cancel()

                    feeding.start_soon(feed)
                    if until_idle:
                        feeding.start_soon(watch_idle, messages)
                    await stop.wait()
                    feeding.cancel_scope.cancel()
        tg.cancel_scope.cancel()
    return handled


IDLE_POLL = 0.05  # how often an until_idle worker looks again while the broker still dispatches


def _owns_the_process() -> bool:
    """The main thread, and nobody has taken SIGTERM yet (servers such as uvicorn or gunicorn
    have; trio and asyncio take only SIGINT, so that one says nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    return signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)


def _attempt(msg: Message) -> int:
    """Which delivery of this message this is (1 for the first)."""
    count = msg.headers.get("x-delivery-count", 0)
    return count + 1 if type(count) is int and count >= 0 else 1


@attrs.frozen
class _Fate:
    """What the broker does with a message whose handler failed, from the queue's arguments."""

    arguments: Table
    requeue: bool

    def after_failure(self, attempt: int) -> str:
        dlx = self.arguments.get("x-dead-letter-exchange")
        gone = (
            f"dead-lettered to exchange {dlx!r}"
            if isinstance(dlx, str)
            else "dropped (the queue has no dead-letter exchange)"
        )
        if not self.requeue:
            return f"rejected: {gone}"
        limit = self.arguments.get("x-delivery-limit")
        if type(limit) is int and attempt > limit:
            return f"delivery limit {limit} reached: {gone}"
        if "x-delayed-retry-min" in self.arguments:
            return "requeued, to be retried after a backoff"
        return "requeued"


class ProcessedIds:
    """Remembers which message ids were processed, in a SQLite file (or ``:memory:``).

    At-least-once delivery plus this makes processing effectively exactly-once: a redelivered
    duplicate (after a crash or a lost ack) is recognised by its ``message_id``, acked, and
    skipped. The id is recorded in the same step as the ack decision, after the work succeeded;
    do the work's own writes in this database's transaction (``self.db``) to make the two
    atomic.
    """

    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS processed (message_id TEXT PRIMARY KEY, at REAL NOT NULL)"
        )

    def seen(self, message_id: str) -> bool:
        row = self.db.execute("SELECT 1 FROM processed WHERE message_id = ?", (message_id,))
        return row.fetchone() is not None

    def record(self, message_id: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO processed VALUES (?, ?)", (message_id, time.time()))

    def once(self, msg: Message) -> contextlib.AbstractAsyncContextManager[bool]:
        """``process_once(msg, self)``: see there."""
        return process_once(msg, self)

    def close(self) -> None:
        self.db.close()


class ProcessedStore(Protocol):
    """Where processed message ids are kept: ``ProcessedIds`` (SQLite) or your own (a database
    table next to the work's own data is best: then recording and the work commit together)."""

    def seen(self, message_id: str) -> bool: ...

    def record(self, message_id: str) -> None: ...


@contextlib.asynccontextmanager
async def process_once(msg: Message, store: ProcessedStore) -> AsyncIterator[bool]:
    """Yields whether this message id is new. On success the id is recorded and the message
    acked; on error it is nacked (requeued); a duplicate is acked without running the work::

        async with mqroute.process_once(msg, store) as first_time:
            if first_time:
                charge(msg)
    """
    message_id = msg.message_id
    if message_id is None:
        raise UsageError("idempotent processing needs messages with a message_id")
    if store.seen(message_id):
        yield False
        if not msg.settled:
            await msg.ack()
        return
    try:
        yield True
    except BaseException:
        if not msg.settled:
            with anyio.CancelScope(shield=True):
                await msg.nack(requeue=True)
        raise
    store.record(message_id)
    if not msg.settled:
        await msg.ack()
