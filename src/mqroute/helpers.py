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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

import anyio
import anyio.abc

from .client import Connection, Message
from .errors import UsageError

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
    handle_signals: bool = True,
) -> int:
    """Run ``handler`` over ``queue`` with ``concurrency`` tasks until stopped; returns how many
    messages were handled successfully.

    A message is acked when its handler returns and rejected (requeued if
    ``requeue_on_error``) when it raises; the failure is logged and the worker goes on.
    Stopping — SIGINT/SIGTERM, or ``stop`` set — is graceful: no new message is taken, those in
    flight finish and are settled, and whatever the broker had already sent ahead is released
    (no delivery attempt counted).
    """
    if concurrency < 1:
        raise UsageError("concurrency must be at least 1")
    if stop is None:
        stop = anyio.Event()
    handled = 0
    send, receive = anyio.create_memory_object_stream[Message](0)
    inboxes = [receive.clone() for _ in range(concurrency)]
    receive.close()

    async def work(inbox: anyio.abc.ObjectReceiveStream[Message]) -> None:
        nonlocal handled
        async with inbox:
            async for msg in inbox:
                try:
                    async with msg.process(requeue=requeue_on_error):
                        await handler(msg)
                except Exception:
                    log.exception(
                        "handler failed on message %s from %r; it was %s",
                        msg.delivery_tag,
                        queue,
                        "requeued" if requeue_on_error else "rejected",
                    )
                    continue
                handled += 1

    async def watch_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                stop.set()
                return

    async with anyio.create_task_group() as tg:
        if handle_signals:
            tg.start_soon(watch_signals)
        async with anyio.create_task_group() as workers:
            for inbox in inboxes:
                workers.start_soon(work, inbox)
            async with send, conn.consume(queue, prefetch=prefetch or concurrency) as messages:
                async with anyio.create_task_group() as feeding:

                    async def feed() -> None:
                        async for msg in messages:
                            try:
                                await send.send(msg)  # waits for a free worker
                            except anyio.get_cancelled_exc_class():
                                with anyio.CancelScope(shield=True):
                                    await msg.release()  # taken, never started
                                raise
                        feeding.cancel_scope.cancel()

                    feeding.start_soon(feed)
                    await stop.wait()
                    feeding.cancel_scope.cancel()
        tg.cancel_scope.cancel()
    return handled


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
