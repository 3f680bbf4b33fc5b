"""run_worker and ProcessedIds against the real server."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio

import mqroute
from mqroute.broker import Broker
from mqroute.server import ServerAddress


async def fill(conn: mqroute.Connection, queue: str, n: int) -> None:
    await conn.declare_queue(queue)
    async with conn.publisher() as pub:
        for i in range(n):
            await pub.publish("", queue, str(i), message_id=f"m{i}")


async def test_worker_pool_handles_everything_concurrently(
    conn: mqroute.Connection, broker: Broker
) -> None:
    await fill(conn, "tasks", 30)
    done: list[int] = []
    running = 0
    most = 0
    stop = trio.Event()

    async def handle(msg: mqroute.Message) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await trio.sleep(0.01)
        running -= 1
        done.append(int(msg.body))
        if len(done) == 30:
            stop.set()

    handled = await mqroute.run_worker(
        conn, "tasks", handle, concurrency=3, stop=stop, handle_signals=False
    )
    assert handled == 30 and sorted(done) == list(range(30))
    assert most == 3
    await conn.declare_queue("tasks", passive=True)
    assert len(broker.queues["tasks"]) == 0 and broker.queues["tasks"].unacked == 0


async def test_stopping_finishes_in_flight_and_leaves_the_rest(
    conn: mqroute.Connection, broker: Broker
) -> None:
    await fill(conn, "tasks", 20)
    stop = trio.Event()
    started = 0

    async def handle(msg: mqroute.Message) -> None:
        nonlocal started
        started += 1
        if started == 2:
            stop.set()  # stop while two are in flight
        await trio.sleep(0.05)

    handled = await mqroute.run_worker(
        conn, "tasks", handle, concurrency=2, prefetch=10, stop=stop, handle_signals=False
    )
    assert handled == 2
    await conn.declare_queue("tasks", passive=True)
    assert len(broker.queues["tasks"]) == 18 and broker.queues["tasks"].unacked == 0


async def test_sigterm_stops_the_worker_gracefully(conn: mqroute.Connection) -> None:
    await fill(conn, "tasks", 5)

    async def handle(msg: mqroute.Message) -> None:
        if msg.body == b"2":
            os.kill(os.getpid(), signal.SIGTERM)
        await trio.sleep(0.01)

    handled = await mqroute.run_worker(conn, "tasks", handle)
    assert 3 <= handled <= 5


async def test_a_failing_handler_rejects_its_message(conn: mqroute.Connection) -> None:
    await conn.declare_exchange("dlx", "fanout")
    await conn.declare_queue("dlq")
    await conn.bind_queue("dlq", "dlx")
    await conn.declare_queue("tasks", arguments={"x-dead-letter-exchange": "dlx"})
    await conn.publish("", "tasks", b"bad")
    await conn.publish("", "tasks", b"good")
    stop = trio.Event()

    async def handle(msg: mqroute.Message) -> None:
        if msg.body == b"good":
            stop.set()
            return
        raise ValueError("cannot handle this")

    handled = await mqroute.run_worker(conn, "tasks", handle, stop=stop, handle_signals=False)
    assert handled == 1  # the failure was logged and the worker went on
    dead = await conn.get("dlq", auto_ack=True)
    assert dead is not None and dead.body == b"bad"


async def test_idempotent_consumer_survives_a_crash_between_work_and_ack(
    server: ServerAddress, tmp_path: Path
) -> None:
    charged: list[str] = []
    async with mqroute.connect(server.url) as producer:
        await producer.declare_queue("payments")
        await producer.publish("", "payments", b"10 EUR", message_id="pay-1")

    # The first worker charges, records the id, then dies before its ack reaches the broker.
    seen = mqroute.ProcessedIds(tmp_path / "processed.db")
    worker = mqroute.connect(server.url)
    await worker.open()
    msg = await worker.get("payments")
    assert msg is not None and msg.message_id is not None
    charged.append(msg.message_id)
    seen.record(msg.message_id)
    await worker.close(polite=False)  # the crash: no ack; the broker redelivers
    seen.close()

    # A restarted worker gets the same message again and must not charge twice.
    seen = mqroute.ProcessedIds(tmp_path / "processed.db")
    async with mqroute.connect(server.url) as again:
        msg = await again.get("payments")
        assert msg is not None and msg.redelivered
        async with seen.once(msg) as first_time:
            if first_time:
                charged.append(msg.message_id or "")
        assert msg.settled and await again.get("payments") is None
    assert charged == ["pay-1"]


async def test_idempotent_once_runs_new_work_and_records_it(
    conn: mqroute.Connection, tmp_path: Path
) -> None:
    seen = mqroute.ProcessedIds(":memory:")
    await fill(conn, "q", 2)
    for _ in range(2):
        msg = await conn.get("q")
        assert msg is not None
        async with seen.once(msg) as first_time:
            assert first_time
    assert seen.seen("m0") and seen.seen("m1")
