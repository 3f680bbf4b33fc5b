"""Bodies on disk come back through the shell's page-in task, off the event loop: a store whose
reads block holds up only the consumers that wait for those bodies, never another connection."""

from __future__ import annotations

import threading
from pathlib import Path

import trio

import mqroute
from mqroute.core.queue import RESIDENT
from mqroute.model import Message
from mqroute.server.store import SqliteStore

from .test_durability import running

BACKLOG = RESIDENT + 500  # the last ones' bodies leave memory once they are on disk


class BlockingReads(SqliteStore):
    """A store whose reads wait until ``release`` is set (a disk that stalls)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.release = threading.Event()
        self.reading = threading.Event()

    def read_messages(self, queue: str, seqs: list[int]) -> dict[int, Message]:
        self.reading.set()
        if not self.release.wait(timeout=30):  # never hang the suite
            raise TimeoutError("test store: never released")
        return super().read_messages(queue, seqs)


async def fill(conn: mqroute.Connection, queue: str, count: int) -> None:
    await conn.declare_queue(queue, durable=True)
    async with conn.publisher(max_in_flight=500) as pub:
        for i in range(count):
            await pub.publish("", queue, b"%06d" % i, persistent=True)


async def wait_for(event: threading.Event) -> None:
    while not event.is_set():
        await trio.sleep(0.01)  # a thread's event: nothing to await on the loop's side


async def test_a_store_whose_reads_block_stalls_no_other_connection(tmp_path: Path) -> None:
    store = BlockingReads(tmp_path)
    async with running(tmp_path, store=store) as address:
        async with mqroute.connect(address.url) as filler:
            await fill(filler, "backlog", BACKLOG)
        got: list[int] = []

        async def drain_backlog() -> None:
            async with mqroute.connect(address.url) as conn:
                async with conn.consume("backlog", prefetch=100) as messages:
                    async for message in messages:
                        got.append(int(message.body))
                        await message.ack()
                        if len(got) == BACKLOG:
                            return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain_backlog)
            await wait_for(store.reading)  # the backlog's consumer now waits for the disk
            async with mqroute.connect(address.url) as other:
                await other.declare_queue("other")
                with trio.fail_after(5):
                    await other.publish("", "other", b"still served")
                    message = await other.get("other", auto_ack=True)
                assert message is not None and message.body == b"still served"
                assert len(got) < BACKLOG  # the backlog is still waiting
            store.release.set()
        assert got == list(range(BACKLOG))  # every body came back, in order


async def test_a_get_waits_for_a_body_on_disk_instead_of_answering_empty(tmp_path: Path) -> None:
    store = BlockingReads(tmp_path)
    store.release.set()
    async with running(tmp_path, store=store) as address, mqroute.connect(address.url) as conn:
        await fill(conn, "backlog", BACKLOG)
        await conn.purge_queue("backlog")
        store.reading.clear()
        await fill(conn, "backlog", BACKLOG)
        got = []
        while (message := await conn.get("backlog", auto_ack=True)) is not None:
            got.append(int(message.body))
        assert got == list(range(BACKLOG))
        assert store.reading.is_set()  # some of them came from disk


async def test_a_redrive_moves_a_backlog_whose_bodies_are_on_disk(tmp_path: Path) -> None:
    store = BlockingReads(tmp_path)
    store.release.set()
    async with running(tmp_path, store=store) as address, mqroute.connect(address.url) as conn:
        await fill(conn, "dead", BACKLOG)
        await conn.declare_exchange("retry", "fanout")
        await conn.declare_queue("retry", durable=True)
        await conn.bind_queue("retry", "retry")
        assert await conn.redrive("dead", to_exchange="retry", limit=BACKLOG - 1) == BACKLOG - 1
        assert await conn.redrive("dead", to_exchange="retry") == 1
        assert store.reading.is_set()
        info = await conn.declare_queue("retry", passive=True)
        assert info.message_count == BACKLOG
