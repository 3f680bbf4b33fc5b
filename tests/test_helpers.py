"""run_worker and ProcessedIds against the real server."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import pytest
import trio

import mqroute
from mqroute.core.vhost import Vhost
from mqroute.server import ServerAddress


async def fill(conn: mqroute.Connection, queue: str, n: int) -> None:
    await conn.declare_queue(queue)
    async with conn.publisher() as pub:
        for i in range(n):
            await pub.publish("", queue, str(i), message_id=f"m{i}")


async def test_worker_pool_handles_everything_concurrently(
    conn: mqroute.Connection, broker: Vhost
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
    conn: mqroute.Connection, broker: Vhost
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


CRASHING_CONSUMER = """
import os, sys, trio, mqroute

async def main(url, db):
    seen = mqroute.ProcessedIds(db)
    async with mqroute.connect(url) as conn:
        msg = await conn.get("payments")
        seen.record(msg.message_id)        # the work is done and recorded...
        print("charged", msg.message_id, flush=True)
        os._exit(1)                        # ...and the process dies before its ack

trio.run(main, sys.argv[1], sys.argv[2])
"""


async def test_idempotent_consumer_survives_a_crash_between_work_and_ack(
    server: ServerAddress, tmp_path: Path
) -> None:
    async with mqroute.connect(server.url) as producer:
        await producer.declare_queue("payments")
        await producer.publish("", "payments", b"10 EUR", message_id="pay-1")
    db = tmp_path / "processed.db"
    crashed = await trio.run_process(
        [sys.executable, "-c", CRASHING_CONSUMER, server.url, str(db)],
        capture_stdout=True,
        check=False,
    )
    assert crashed.returncode == 1 and b"charged pay-1" in crashed.stdout

    # A restarted consumer gets the same message again and must not charge twice.
    charged = []
    seen = mqroute.ProcessedIds(db)
    async with mqroute.connect(server.url) as again:
        msg = await again.get("payments")
        assert msg is not None and msg.redelivered and msg.message_id == "pay-1"
        async with seen.once(msg) as first_time:
            if first_time:
                charged.append(msg.message_id)
        assert msg.settled and await again.get("payments") is None
    assert charged == []


async def test_process_once_with_a_store_of_your_own(conn: mqroute.Connection) -> None:
    class SetStore:
        def __init__(self) -> None:
            self.ids: set[str] = set()

        def seen(self, message_id: str) -> bool:
            return message_id in self.ids

        def record(self, message_id: str) -> None:
            self.ids.add(message_id)

    store = SetStore()
    await fill(conn, "q", 1)
    await conn.publish("", "q", b"0 again", message_id="m0")
    firsts = []
    for _ in range(2):
        msg = await conn.get("q")
        assert msg is not None
        async with mqroute.process_once(msg, store) as first_time:
            firsts.append(first_time)
    assert firsts == [True, False] and store.ids == {"m0"}


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


async def test_until_idle_returns_once_the_queue_and_the_worker_are_empty(
    conn: mqroute.Connection, broker: Vhost
) -> None:
    await fill(conn, "tasks", 25)
    seen: list[bytes] = []

    async def handle(msg: mqroute.Message) -> None:
        seen.append(msg.body)

    with trio.fail_after(10):
        handled = await mqroute.run_worker(conn, "tasks", handle, concurrency=4, until_idle=True)
    assert handled == 25 and len(seen) == 25
    assert len(broker.queues["tasks"]) == 0 and broker.queues["tasks"].unacked == 0


async def test_until_idle_waits_for_messages_held_back_by_a_retry_backoff(
    conn: mqroute.Connection,
) -> None:
    await conn.declare_queue("parked")
    await conn.declare_queue(
        "flaky",
        arguments={
            "x-delayed-retry-min": 50,
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "parked",
        },
    )
    await conn.publish("", "flaky", b"always fails", message_id="job-1")
    attempts = 0

    async def handle(msg: mqroute.Message) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("down")

    with trio.fail_after(10):
        await mqroute.run_worker(conn, "flaky", handle, requeue_on_error=True, until_idle=True)
    assert attempts == 3  # the first try and two retries, then the limit
    assert (await conn.declare_queue("parked", passive=True)).message_count == 1


async def test_a_failure_is_logged_with_its_id_attempt_and_fate(
    conn: mqroute.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await conn.declare_queue("dlq")
    await conn.declare_queue(
        "tasks",
        arguments={
            "x-delivery-limit": 1,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dlq",
        },
    )
    await conn.publish("", "tasks", b"bad", message_id="order-7")

    async def handle(msg: mqroute.Message) -> None:
        raise ValueError("cannot handle this")

    with caplog.at_level(logging.ERROR, logger="mqroute.worker"):
        await mqroute.run_worker(conn, "tasks", handle, requeue_on_error=True, until_idle=True)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "handler failed on message order-7 (attempt 1) from 'tasks'; requeued",
        "handler failed on message order-7 (attempt 2) from 'tasks'; "
        "delivery limit 1 reached: dead-lettered to exchange ''",
    ]


def test_by_default_a_worker_leaves_signals_to_whoever_owns_the_process(
    mqroute_broker: str,
) -> None:
    """In a thread, or beside a server's own SIGTERM handler, run_worker takes no signals."""
    import threading

    def servers_handler(signum: int, frame: object) -> None:
        pass

    async def worker() -> int:
        before = signal.getsignal(signal.SIGTERM)
        async with mqroute.connect(mqroute_broker) as conn:
            await fill(conn, "jobs", 3)

            async def handle(msg: mqroute.Message) -> None:
                assert signal.getsignal(signal.SIGTERM) is before

            return await mqroute.run_worker(conn, "jobs", handle, until_idle=True)

    previous = signal.signal(signal.SIGTERM, servers_handler)
    try:
        assert trio.run(worker) == 3  # the main thread, beside the "server's" handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(trio.run(worker)))
    thread.start()
    thread.join(30)
    assert results == [3]  # a non-main thread: no signal handlers at all
