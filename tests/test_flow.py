"""Flow control: the core's decisions (plain calls), and the server and SDK carrying them out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing

import mqroute
from mqroute.core.flow import ENTRY_OVERHEAD, FlowControl, MemoryLedger, Pause
from mqroute.core.vhost import Vhost
from mqroute.server import ServerAddress, ServerConfig, serve
from mqroute.server.driver import BLOCKED_GRACE_BYTES


@attrs.define
class FakeQueue:
    name: str = "q"
    deleted: bool = False
    size: int = 0
    consumers: int = 1
    resident: int = 0

    def flow_bytes(self) -> int:
        return self.size

    def has_consumers(self) -> bool:
        return self.consumers > 0


def test_a_publisher_into_a_consumed_queue_over_its_limit_waits_until_it_drains() -> None:
    flow = FlowControl(MemoryLedger(), queue_limit=1000)
    queue = FakeQueue(size=1001)
    flow.published(1, persistent=False)
    assert flow.over_limit(queue)
    flow.wait_for(1, queue)
    [(session, pause)] = flow.take_changes().items()
    assert session == 1 and pause is not None and "queue 'q'" in pause.reason
    assert pause.credit  # no alarm: the shell may simply stop reading it
    queue.size = 600  # not yet under half
    flow.check()
    assert flow.take_changes() == {}
    queue.size = 500
    flow.check()
    assert flow.take_changes() == {1: None}


def test_a_queue_nobody_consumes_blocks_nobody_by_itself() -> None:
    flow = FlowControl(MemoryLedger(), queue_limit=1000)
    assert not flow.over_limit(FakeQueue(size=10**9, consumers=0))


def test_a_waiting_publisher_resumes_when_the_consumers_leave() -> None:
    flow = FlowControl(MemoryLedger(), queue_limit=1000)
    queue = FakeQueue(size=5000)
    flow.wait_for(7, queue)
    flow.take_changes()
    queue.consumers = 0
    flow.check()
    assert flow.take_changes() == {7: None}


def test_the_memory_alarm_blocks_the_publishers_of_heavy_queues() -> None:
    ledger = MemoryLedger()
    flow = FlowControl(ledger, memory_limit=10_000)
    heavy, light = FakeQueue(name="flood"), FakeQueue(name="orders")
    heavy.resident, light.resident = 9_000, 99  # 1 % of the watermark makes a queue heavy
    flow.published(1, persistent=False)
    flow.published(2, persistent=False)
    ledger.used = 10_001
    flow.check()
    assert flow.take_changes() == {}  # nobody yet: each is judged as it publishes
    assert flow.heavy(heavy) and not flow.heavy(light)
    flow.block_for_memory(1)  # the broker does this for a publish into a heavy queue
    [(session, pause)] = flow.take_changes().items()
    assert session == 1 and pause is not None and "memory alarm" in pause.reason
    assert not pause.credit  # an alarm: the client is told
    ledger.used = 9_500  # under the watermark, not yet under 90 % of it
    flow.check()
    assert flow.take_changes() == {}
    ledger.used = 8_999
    flow.check()
    assert flow.take_changes() == {1: None}


def test_past_110_percent_the_memory_alarm_blocks_every_publisher_and_no_consumer() -> None:
    ledger = MemoryLedger()
    flow = FlowControl(ledger, memory_limit=10_000)
    flow.published(1, persistent=False)
    flow.published(2, persistent=True)
    ledger.used = 10_500
    flow.check()
    ledger.used = 11_001
    flow.check()
    changes = flow.take_changes()
    assert set(changes) == {1, 2}
    assert all(p is not None and "every publisher" in p.reason for p in changes.values())
    flow.published(3, persistent=False)  # a new publisher is blocked at once
    pause = flow.take_changes()[3]
    assert pause is not None and "memory alarm" in pause.reason
    ledger.used = 8_999
    flow.check()
    assert flow.take_changes() == {1: None, 2: None, 3: None}


def test_the_disk_alarm_blocks_only_publishers_of_persistent_messages() -> None:
    flow = FlowControl(MemoryLedger())
    flow.published(1, persistent=False)
    flow.published(2, persistent=True)
    flow.set_disk_alarm("disk alarm: 10 MB free, under the limit of 50 MB")
    assert flow.take_changes() == {2: Pause("disk alarm: 10 MB free, under the limit of 50 MB")}
    flow.set_disk_alarm(None)
    assert flow.take_changes() == {2: None}


def test_a_closed_session_is_forgotten() -> None:
    flow = FlowControl(MemoryLedger(), queue_limit=10)
    queue = FakeQueue(size=100)
    flow.wait_for(1, queue)
    flow.session_closed(1)
    assert flow.take_changes() == {}
    queue.size = 0
    flow.check()
    assert flow.take_changes() == {}


def test_the_ledger_counts_what_queues_hold_in_memory() -> None:
    from mqroute.model import Message, QueueSpec

    broker = Vhost()
    session = broker.open_session("o")
    broker.declare_queue("o", QueueSpec(name="q"))
    for _ in range(3):
        broker.publish(session, Message(exchange="", routing_key="q", body=b"x" * 100))
    assert broker.ledger.used == 3 * (100 + ENTRY_OVERHEAD)
    first = broker.get(session, "q")
    assert first is not None and broker.ledger.used == 3 * (100 + ENTRY_OVERHEAD)
    broker.ack(session, first.delivery_tag)
    assert broker.ledger.used == 2 * (100 + ENTRY_OVERHEAD)
    broker.get(session, "q", auto_ack=True)
    broker.purge_queue("o", "q")
    assert broker.ledger.used == 0


# --- end to end ------------------------------------------------------------------------------


@asynccontextmanager
async def broker_with(**kw: object) -> AsyncIterator[tuple[Vhost, ServerAddress]]:
    broker = Vhost(**kw)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            lambda task_status: serve(ServerConfig(port=0), broker=broker, task_status=task_status)
        )
        try:
            yield broker, address
        finally:  # a failing test must not leave the server running (and the test hanging)
            nursery.cancel_scope.cancel()


async def test_a_slow_consumer_paces_its_publisher(autojump_clock: trio.testing.MockClock) -> None:
    limit = 20 * (1000 + ENTRY_OVERHEAD)
    async with (
        broker_with(queue_flow_limit=limit) as (broker, address),
        mqroute.connect(address.url) as producer,
        mqroute.connect(address.url) as consumer,
    ):
        await producer.declare_queue("q")
        deepest = 0
        async with consumer.consume("q", prefetch=5) as messages:

            async def produce() -> None:
                nonlocal deepest
                async with producer.publisher(max_in_flight=50) as pub:
                    for _ in range(500):
                        await pub.publish("", "q", b"x" * 1000)
                        deepest = max(deepest, len(broker.queues["q"]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                got = 0
                async for msg in messages:
                    if got % 50 == 0:
                        await trio.sleep(1)  # a slow consumer now and then
                    await msg.ack()
                    got += 1
                    if got == 500:
                        break
        assert producer.blocked is None
    # The publisher ran at most the limit (plus what was in flight) ahead of the consumer.
    assert deepest <= 20 + 50 + 5


async def test_credit_alone_stops_reading_a_publisher_without_telling_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """RabbitMQ's ``flow`` state: no Blocked frame; its publishes wait in the socket buffers
    and are taken as the queue drains."""
    from mqroute.model import Properties
    from mqroute.protocol import Blocked, Confirm, Publish

    from .helpers import RawClient

    limit = 20 * (1000 + ENTRY_OVERHEAD)
    publish = Publish(
        exchange="", routing_key="q", body=b"x" * 1000, properties=Properties(), mandatory=False
    )
    async with (
        broker_with(queue_flow_limit=limit) as (broker, address),
        mqroute.connect(address.url) as consumer,
    ):
        await consumer.declare_queue("q")
        async with consumer.consume("q", prefetch=1) as messages:
            raw = await RawClient.connect(address)
            async with trio.open_nursery() as nursery:

                async def send_all() -> None:
                    for _ in range(300):
                        await raw.send(publish)

                nursery.start_soon(send_all)
                await trio.testing.wait_all_tasks_blocked()
                # The publish that crossed the limit went in; the next one waits, unread.
                assert len(broker.queues["q"]) <= 21
                got = 0
                async for msg in messages:
                    await msg.ack()
                    got += 1
                    if got == 300:
                        break
            events = []
            with trio.move_on_after(1):
                while True:
                    events.append(await raw.next())
        assert not any(isinstance(e, Blocked) for e in events)
        confirms = [e for e in events if isinstance(e, Confirm)]
        assert confirms and all(c.ok for c in confirms)


async def test_a_connection_that_also_consumes_is_told_so_its_acks_still_flow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Not reading it would stop the very acks its queue waits for: a deadlock."""
    limit = 20 * (1000 + ENTRY_OVERHEAD)
    async with (
        broker_with(queue_flow_limit=limit) as (_, address),
        mqroute.connect(address.url) as conn,
    ):
        await conn.declare_queue("q")
        seen_blocked = False
        async with conn.consume("q", prefetch=1) as messages:

            async def produce() -> None:
                async with conn.publisher(max_in_flight=50) as pub:
                    for _ in range(300):
                        await pub.publish("", "q", b"x" * 1000)

            async def watch() -> None:
                nonlocal seen_blocked
                with trio.move_on_after(600):  # bounded: the test fails, it does not hang
                    while not seen_blocked:
                        seen_blocked = conn.blocked is not None
                        await trio.sleep(0.01)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                nursery.start_soon(watch)
                got = 0
                async for msg in messages:
                    if got % 50 == 0:
                        await trio.sleep(1)
                    await msg.ack()
                    got += 1
                    if got == 300:
                        break
        assert seen_blocked and conn.blocked is None


async def test_the_memory_alarm_blocks_publishers_until_consumers_free_memory(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit = 100 * (1000 + ENTRY_OVERHEAD)
    async with (
        broker_with(memory_limit=limit) as (broker, address),
        mqroute.connect(address.url) as producer,
        mqroute.connect(address.url) as consumer,
    ):
        await producer.declare_queue("q")
        sent = 0
        with trio.move_on_after(10):
            async with producer.publisher(max_in_flight=10) as pub:
                for _ in range(1000):
                    await pub.publish("", "q", b"x" * 1000)
                    sent += 1
        # Past the watermark: what was in flight, and the grace taken after the Blocked.
        bound = limit + BLOCKED_GRACE_BYTES + 10 * (1000 + ENTRY_OVERHEAD)
        assert producer.blocked is not None and "memory alarm" in producer.blocked
        assert limit <= broker.ledger.used <= bound and sent * (1000 + ENTRY_OVERHEAD) <= bound
        # The consumer is not blocked: it drains, and the alarm clears.
        drained = 0
        while (msg := await consumer.get("q")) is not None:
            await msg.ack()
            drained += 1
        await producer.declare_queue("q", passive=True)  # a round trip
        assert producer.blocked is None
        await producer.publish("", "q", b"after the alarm")
        assert drained >= 100


async def test_a_client_ignoring_blocked_is_not_read_past_a_bound(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mqroute.model import Properties
    from mqroute.protocol import Blocked, Publish
    from mqroute.server import driver as server_module

    from .helpers import RawClient

    monkeypatch.setattr(server_module, "BLOCKED_GRACE_BYTES", 50 * 2048)
    limit = 10 * (1000 + ENTRY_OVERHEAD)
    async with broker_with(memory_limit=limit) as (broker, address):
        raw = await RawClient.connect(address)
        publish = Publish(
            exchange="", routing_key="q", body=b"x" * 1000, properties=Properties(), mandatory=False
        )
        async with mqroute.connect(address.url) as conn:
            await conn.declare_queue("q")
        with trio.move_on_after(5):
            for _ in range(2000):
                await raw.send(publish)
        await trio.testing.wait_all_tasks_blocked()
        held = len(broker.queues["q"])
        assert 10 <= held <= 10 + 60 + 200  # the limit, the grace, and what was being read
        events = []
        with trio.move_on_after(1):
            while True:
                events.append(await raw.next())
        assert any(isinstance(e, Blocked) for e in events)


async def test_the_outbox_of_a_consumer_that_never_reads_is_bounded_in_bytes() -> None:
    from mqroute.core.session import OUTBOX_BYTES

    from .helpers import RawClient, consume_frame

    # No credit flow here: the publisher must be able to fill the queue past the stuck one.
    async with (
        broker_with(queue_flow_limit=2**40) as (broker, server),
        mqroute.connect(server.url) as conn,
    ):
        await conn.declare_queue("q")
        stuck = await RawClient.connect(server)
        await stuck.send(consume_frame("q", "stuck"))
        async with conn.publisher() as pub:
            for _ in range(400):
                await pub.publish("", "q", b"x" * 128 * 1024)  # 50 MiB in all
        await trio.testing.wait_all_tasks_blocked()
        session = next(s for s in broker.sessions.values() if s.consumers)
        assert session._outbox_bytes <= OUTBOX_BYTES + 128 * 1024
        unacked = broker.queues["q"].unacked
        # What left the queue is the outbox, the writer's one write and the socket buffers.
        assert unacked * 128 * 1024 <= OUTBOX_BYTES + 16 * 1024 * 1024
        assert len(broker.queues["q"]) == 400 - unacked


async def test_settled_messages_leave_nothing_in_the_deliver_tail_cache(
    conn: mqroute.Connection,
) -> None:
    import gc

    from mqroute.server import native

    await conn.declare_queue("q")
    async with conn.publisher() as pub:
        for _ in range(50):
            await pub.publish("", "q", b"x" * 256 * 1024)
    async with conn.consume("q", prefetch=10) as messages:
        got = 0
        async for msg in messages:
            await msg.ack()
            got += 1
            if got == 50:
                break
    await conn.declare_queue("q", passive=True)  # the last acks are handled
    del msg
    gc.collect()
    assert sum(len(t[3]) for t in native._TAILS.values()) < 256 * 1024


async def test_a_backlog_a_consumer_took_and_gave_back_is_paged_out_again(tmp_path: object) -> None:
    from pathlib import Path

    from mqroute.core.queue import RESIDENT

    from .test_durability import running

    broker = Vhost(durable=True)
    async with running(Path(str(tmp_path)), broker=broker) as address:
        async with mqroute.connect(address.url) as conn:
            await conn.declare_queue("q", durable=True)
            async with conn.publisher() as pub:
                for _ in range(5000):
                    await pub.publish("", "q", b"x" * 1000, persistent=True)
        paged_in_before = broker.ledger.used
        async with mqroute.connect(address.url) as greedy:
            async with greedy.consume("q", prefetch=0) as messages:
                got = 0
                async for _ in messages:  # takes everything, acks nothing
                    got += 1
                    if got == 5000:
                        break
        async with mqroute.connect(address.url) as conn:
            await conn.declare_queue("q", durable=True, passive=True)  # the close was handled
        queue = broker.queues["q"]
        assert len(queue) == 5000 and queue.unacked == 0
        resident = [e for e in queue.ready_entries() if e.message is not None]
        assert len(resident) <= RESIDENT + 256
        assert broker.ledger.used <= paged_in_before + 2 * RESIDENT * (1000 + ENTRY_OVERHEAD)
        async with mqroute.connect(address.url) as conn:  # and it is still all there, in order
            async with conn.consume("q", prefetch=100) as messages:
                count = 0
                async for msg in messages:
                    assert msg.redelivered
                    await msg.ack()
                    count += 1
                    if count == 5000:
                        break


async def test_a_flood_into_an_unconsumed_queue_blocks_its_publisher_not_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit = 16 * BLOCKED_GRACE_BYTES  # well above what a blocked client may still send
    async with (
        broker_with(memory_limit=limit) as (broker, address),
        mqroute.connect(address.url) as flood,
        mqroute.connect(address.url) as worker,
    ):
        await flood.declare_queue("flood")
        await worker.declare_queue("orders")
        with trio.move_on_after(10):
            async with flood.publisher(max_in_flight=10) as pub:
                for _ in range(10_000):
                    await pub.publish("", "flood", b"x" * 1000)
        assert flood.blocked is not None and "memory alarm" in flood.blocked
        assert not broker.flow.memory_alarm_everyone
        for n in range(100):  # the well-behaved client is not held up
            await worker.publish("", "orders", b"order %d" % n)
            msg = await worker.get("orders")
            assert msg is not None
            await msg.ack()
        assert worker.blocked is None


async def test_a_client_the_server_stopped_reading_is_not_dropped_for_silence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit = 16 * BLOCKED_GRACE_BYTES
    async with (
        broker_with(memory_limit=limit) as (_, address),
        mqroute.connect(address.url, heartbeat=1) as flood,
        mqroute.connect(address.url, heartbeat=1) as drain,
    ):
        await flood.declare_queue("flood")
        # 1,000 in flight is more than the grace: the server stops reading this client.
        with trio.move_on_after(30):
            async with flood.publisher(max_in_flight=1000) as pub:
                for _ in range(100_000):
                    await pub.publish("", "flood", b"x" * 1000)
        assert flood.blocked is not None and flood.is_open
        while await drain.get("flood", auto_ack=True) is not None:
            pass
        await flood.declare_queue("flood", passive=True)
        assert flood.is_open and flood.blocked is None


ALARM = Pause("memory alarm")
CREDIT = Pause("queue q over its limit", credit=True)


@pytest.mark.parametrize(
    ("pauses", "consuming", "holds_when_told", "tell", "wait"),
    [
        ([], False, True, None, False),
        ([ALARM], False, False, "memory alarm", True),  # an alarm is told, on every port
        ([CREDIT, ALARM], True, False, "memory alarm", True),
        ([CREDIT], False, True, None, True),  # credit: not a word, not read
        ([CREDIT], False, False, None, True),
        ([CREDIT], True, True, "queue q over its limit", True),  # native: told, then waits
        ([CREDIT], True, False, None, False),  # AMQP: its acks must be read
    ],
)
def test_the_pause_policy_is_rabbitmqs_flow_state(
    pauses: list[Pause], consuming: bool, holds_when_told: bool, tell: str | None, wait: bool
) -> None:
    from mqroute.core.flow import PausePolicy, pause_policy

    policy = pause_policy(pauses, consuming=consuming, holds_when_told=holds_when_told)
    assert policy == PausePolicy(tell=tell, wait=wait)
