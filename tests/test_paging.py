"""Paging under memory pressure: the core's decisions (plain calls, a dict for the page file),
the page file itself, and a real server whose flood into an unconsumed queue goes to disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import mqroute
from mqroute.core.effects import NeedBodies
from mqroute.core.flow import ENTRY_OVERHEAD, PAGED_ENTRY, PAGING_RATIO
from mqroute.core.paging import PageWork
from mqroute.core.queue import RESIDENT
from mqroute.core.vhost import Vhost
from mqroute.model import ExchangeSpec, Message, QueueSpec
from mqroute.server.store import PAGE_FILE_NAME, PageFile

from .test_durability import running

BODY = 1000
COST = BODY + ENTRY_OVERHEAD


class DictPages:
    """The page file as a dict, for core tests."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, int], Message] = {}

    def apply(self, work: PageWork) -> None:
        for queue, entry in work.out:
            assert entry.message is not None
            self.rows[(queue.uid, entry.seq)] = entry.message
        for key in work.drop:
            del self.rows[key]
        for uid in work.drop_queues:
            for key in [k for k in self.rows if k[0] == uid]:
                del self.rows[key]

    def read_back(self, broker: Vhost) -> None:
        """What the shell's page-in task does with what the core asked for."""
        for request in broker.effects.take_page_ins():
            uid = request.queue.uid
            bodies = {e.seq: self.rows[(uid, e.seq)] for e in request.entries}
            broker.paged_in(request, bodies)


def paging_broker(messages_before_paging: int) -> tuple[Vhost, DictPages]:
    pages = DictPages()
    broker = Vhost(memory_limit=int(messages_before_paging * COST / PAGING_RATIO))
    broker.serve_from_disk(reads_back=True, can_page=True)
    return broker, pages


def publish(broker: Vhost, n: int, start: int = 0, queue: str = "q") -> None:
    session = broker.open_session("producer")
    for i in range(start, start + n):
        body = b"%08d" % i + b"x" * (BODY - 8)
        broker.publish(session, Message(exchange="", routing_key=queue, body=body))
        broker.flow.check()  # the shell does this every round


def page(broker: Vhost, pages: DictPages) -> int:
    """What the shell's pager does until there is nothing left; returns bodies written."""
    written = 0
    while not (work := broker.pager.take(broker.queues.values(), 1 << 20)).empty:
        pages.apply(work)
        broker.pager.written(work)
        written += len(work.out)
    return written


def drain(broker: Vhost, pages: DictPages, queue: str = "q") -> list[int]:
    session = broker.open_session("consumer")
    got = []
    while True:
        try:
            d = broker.get(session, queue, auto_ack=True)
        except NeedBodies:
            pages.read_back(broker)
            continue
        if d is None:
            return got
        got.append(int(d.message.body[:8]))


def test_no_paging_under_the_paging_mark() -> None:
    broker, pages = paging_broker(messages_before_paging=5000)
    broker.declare_queue("o", QueueSpec(name="q"))
    publish(broker, 4000)
    assert not broker.flow.paging and page(broker, pages) == 0


def test_past_the_mark_bodies_far_from_the_head_go_to_disk_and_come_back_in_order() -> None:
    broker, pages = paging_broker(messages_before_paging=2000)
    broker.declare_queue("o", QueueSpec(name="q"))
    publish(broker, 6000)
    assert broker.flow.paging
    written = page(broker, pages)
    queue = broker.queues["q"]
    in_memory = [e for e in queue.ready_entries() if e.message is not None]
    # The sweep took what was in memory beyond the head; later ones went as they came.
    assert written == 6000 - RESIDENT and len(in_memory) == RESIDENT
    assert broker.ledger.used == RESIDENT * COST + (6000 - RESIDENT) * PAGED_ENTRY
    assert broker.ledger.used < broker.flow.memory_limit * PAGING_RATIO  # no alarm near
    assert drain(broker, pages) == list(range(6000))
    assert broker.ledger.used == 0


def test_a_flood_waits_while_the_page_file_lags_behind_then_goes_on() -> None:
    broker, pages = paging_broker(messages_before_paging=2000)
    broker.declare_queue("o", QueueSpec(name="q"))
    flood = broker.open_session("flood")

    def send(n: int) -> None:
        for _ in range(n):
            broker.publish(flood, Message(exchange="", routing_key="q", body=b"x" * BODY))
            broker.flow.check()

    send(3500)  # past the paging mark, under the watermark
    work = broker.pager.take(broker.queues.values(), 100 * BODY)  # the sweep has begun
    pages.apply(work)
    broker.pager.written(work)
    send(1)
    pause = broker.flow.blocked(flood.id)
    assert pause is not None and pause.credit and "paging" in pause.reason
    page(broker, pages)  # the disk catches up
    broker.flow.check()
    assert broker.flow.blocked(flood.id) is None


def test_rows_of_gone_messages_and_deleted_queues_are_deleted() -> None:
    broker, pages = paging_broker(messages_before_paging=2000)
    broker.declare_queue("o", QueueSpec(name="q"))
    broker.declare_queue("o", QueueSpec(name="other"))
    publish(broker, 5000)
    publish(broker, 3000, queue="other")
    page(broker, pages)
    assert pages.rows
    drain(broker, pages)
    broker.delete_queue("o", "other")
    page(broker, pages)
    assert pages.rows == {}


def test_a_body_whose_page_write_failed_stays_in_memory() -> None:
    broker, pages = paging_broker(messages_before_paging=2000)
    broker.declare_queue("o", QueueSpec(name="q"))
    publish(broker, 5000)
    used = broker.ledger.used
    work = broker.pager.take(broker.queues.values(), 1 << 30)
    assert work.out
    broker.pager.failed(work)  # a full disk
    assert broker.ledger.used == used
    assert all(e.message is not None for e in broker.queues["q"].ready_entries())
    assert page(broker, pages) == 0  # this round is over; the next publish is tried again
    assert drain(broker, pages) == list(range(5000))


def test_a_message_taken_while_its_page_write_runs_keeps_its_body() -> None:
    broker, pages = paging_broker(messages_before_paging=2000)
    broker.declare_queue("o", QueueSpec(name="q"))
    publish(broker, 5000)
    work = broker.pager.take(broker.queues.values(), 1 << 30)
    got = drain(broker, pages)  # meanwhile a consumer takes everything
    pages.apply(work)
    broker.pager.written(work)
    assert got == list(range(5000))
    page(broker, pages)  # the rows of what was taken are deleted after
    assert pages.rows == {}


def test_messages_that_expire_on_disk_are_read_back_and_dead_lettered_in_order() -> None:
    broker, pages = paging_broker(messages_before_paging=2000)
    dlx = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"}
    broker.declare_queue("o", QueueSpec(name="q", arguments={"x-message-ttl": 1000, **dlx}))
    broker.declare_queue("o", QueueSpec(name="dead"))
    publish(broker, 6000)
    page(broker, pages)
    broker.expire(now=broker.now + 2)
    queue = broker.queues["q"]
    assert len(queue) == 0 and len(broker.queues["dead"]) == RESIDENT  # the rest: on disk
    asked = broker.effects.page_ins
    assert [r.dead_letter for r in asked] == ["expired"] and len(
        asked[0].entries
    ) == 6000 - RESIDENT
    pages.read_back(broker)
    assert drain(broker, pages, "dead") == list(range(6000))
    assert broker.ledger.used == 0


def test_a_redrive_reads_back_what_is_on_disk_and_moves_it_all() -> None:
    broker, pages = paging_broker(messages_before_paging=2000)
    broker.declare_queue("o", QueueSpec(name="dead"))
    broker.declare_queue("o", QueueSpec(name="retry"))
    broker.declare_exchange(ExchangeSpec(name="retry", type="fanout"))
    broker.bind_queue("o", "retry", "retry", "", None)
    publish(broker, 6000, queue="dead")
    page(broker, pages)
    moved, rounds = 0, 0
    while True:
        result = broker.redrive("o", "dead", to_exchange="retry")
        moved += result.moved
        rounds += 1
        if not result.more:
            break
        pages.read_back(broker)  # what the shell does before it calls again
    assert moved == 6000 and rounds > 1
    assert len(broker.queues["dead"]) == 0
    assert drain(broker, pages, "retry") == list(range(6000))


def test_the_page_file_starts_empty_and_is_removed_at_close(tmp_path: Path) -> None:
    (tmp_path / PAGE_FILE_NAME).write_bytes(b"left by a crashed broker")
    pages = PageFile(tmp_path)
    message = Message(exchange="ex", routing_key="rk", body=b"body")
    pages.apply([(1, 7, message)], [], [])
    assert pages.read(1, [7]) == {7: message}
    pages.apply([], [(1, 7)], [])
    assert pages.read(1, [7]) == {}
    assert (tmp_path / PAGE_FILE_NAME).stat().st_mode & 0o777 == 0o600
    pages.close()
    assert not (tmp_path / PAGE_FILE_NAME).exists()


async def test_a_flood_into_an_unconsumed_queue_is_paged_instead_of_blocked(
    tmp_path: Path,
) -> None:
    """Without paging the alarm would block the publisher after about 6,000 messages."""
    limit = 6000 * COST
    broker = Vhost(durable=True, memory_limit=limit)
    async with running(tmp_path, broker=broker) as address:
        async with mqroute.connect(address.url) as conn:
            await conn.declare_queue("flood", durable=True)  # transient messages in it
            async with conn.publisher(max_in_flight=100) as pub:
                for i in range(20_000):
                    await pub.publish("", "flood", b"%08d" % i + b"x" * (BODY - 8))
                    assert conn.blocked is None
            # Paging keeps it near the watermark. If the pager's thread lags (a cold disk),
            # the alarm takes effect at the next publish, so up to one confirm window more.
            assert broker.flow.paging and broker.ledger.used < limit + 100 * COST
            with trio.fail_after(10):  # the pager writes in the background
                while broker.pager.take([], 0).out or any(
                    e.message is not None and not e.paged
                    for e in broker.queues["flood"].ready_entries()[RESIDENT + 1000 :]
                ):
                    await trio.sleep(0.05)
            assert (tmp_path / PAGE_FILE_NAME).stat().st_size > 10_000 * BODY
            got = []
            async with conn.consume("flood", prefetch=200) as messages:
                async for msg in messages:
                    got.append(int(msg.body[:8]))
                    assert len(msg.body) == BODY
                    await msg.ack()
                    if len(got) == 20_000:
                        break
            assert got == list(range(20_000))
        assert broker.ledger.used == 0


async def test_persistent_and_paged_transient_messages_share_a_durable_queue(
    tmp_path: Path,
) -> None:
    broker = Vhost(durable=True, memory_limit=3000 * COST)
    async with running(tmp_path, broker=broker) as address:
        async with mqroute.connect(address.url) as conn:
            await conn.declare_queue("mixed", durable=True)
            async with conn.publisher(max_in_flight=100) as pub:
                for i in range(8000):
                    body = b"%08d" % i + b"x" * (BODY - 8)
                    await pub.publish("", "mixed", body, persistent=i % 2 == 0)
            assert broker.flow.paging
            with trio.fail_after(10):  # until the pager has written the transient ones
                while not any(
                    e.paged and e.message is None for e in broker.queues["mixed"].ready_entries()
                ):
                    await trio.sleep(0.05)
            async with conn.consume("mixed", prefetch=100) as messages:
                got = []
                async for msg in messages:
                    got.append((int(msg.body[:8]), msg.properties.persistent))
                    await msg.ack()
                    if len(got) == 8000:
                        break
        assert got == [(i, i % 2 == 0) for i in range(8000)]


def test_memory_freed_by_paging_goes_back_to_the_system() -> None:
    """Bodies over 512 B live in the C heap; glibc keeps what they freed unless trimmed."""
    from mqroute.server import resources

    if resources._malloc_trim() is None:
        pytest.skip("no malloc_trim here (not glibc)")
    bodies = [bytes([i % 256]) * 1024 for i in range(100_000)]  # 100 MB, as paged bodies
    kept = bodies[::16]  # a few stay, spread through the heap, as unpaged ones would
    del bodies
    before = resources.process_memory()
    resources.release_free_memory()
    after = resources.process_memory()
    assert before - after > 50 * 2**20, (before, after)
    assert len(kept) == 6250


def test_a_deleted_queue_gives_the_page_files_space_back(tmp_path: Path) -> None:
    from mqroute.model import Message
    from mqroute.server.store import PageFile

    pages = PageFile(tmp_path)
    try:

        def on_disk() -> int:
            return sum(p.stat().st_size for p in tmp_path.glob(PAGE_FILE_NAME + "*"))

        body = b"p" * 64 * 1024
        for start in range(0, 2000, 200):  # 128 MB paged out, as a flood would be
            out = [
                (7, seq, Message(exchange="", routing_key="q", body=body))
                for seq in range(start, start + 200)
            ]
            pages.apply(out, [], [])
        assert on_disk() > 120_000_000
        pages.apply([], [], [7])  # the queue was deleted
        assert on_disk() < 20_000_000
    finally:
        pages.close()
