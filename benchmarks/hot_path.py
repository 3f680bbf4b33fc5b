"""Where one message's microseconds go in the server, stage by stage, in process.

    .venv/bin/python benchmarks/hot_path.py

Each stage runs alone over --messages messages (256 B, 1 queue, prefetch 100, multi-ack every
50, as in the headline benchmark), --runs times; printed are medians in µs per message. What the
server spends beyond their sum (trio's scheduler, the socket calls) is the difference between
these and its CPU time per message in a real run (docs/performance.md has both).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from mqroute.core.vhost import Vhost
from mqroute.model import Delivery, Message, Properties, QueueSpec
from mqroute.protocol import (
    NEED_DATA,
    Ack,
    Connection,
    Frame,
    Hello,
    Publish,
    Role,
    Welcome,
    encode_deliver_tail,
)
from mqroute.server.startup import GC_THRESHOLD
from mqroute.server.store import SqliteStore


def send_all(conn: Connection, frames: Iterable[Frame]) -> bytes:
    """Bytes for several frames, for one write."""
    return b"".join([conn.send(frame) for frame in frames])


BODY = b"x" * 256


def open_pair() -> tuple[Connection, Connection]:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.receive_data(client.send(Hello(versions=[2], client="bench", heartbeat_ms=0)))
    server.next_event()
    welcome = Welcome(
        version=2, server="bench", heartbeat_ms=0, max_frame_size=1 << 24, connection_id="c"
    )
    client.receive_data(server.send(welcome))
    client.next_event()
    return client, server


def stage_decode_publish(n: int) -> float:
    client, server = open_pair()
    props = Properties(persistent=True, content_type="application/json")
    frame = client.send(
        Publish(exchange="", routing_key="q", body=BODY, properties=props, mandatory=False)
    )
    server.receive_data(frame * n)
    started = time.perf_counter()
    while server.next_event() is not NEED_DATA:
        pass
    return time.perf_counter() - started


def broker_with_queue(consumer: bool) -> tuple[Vhost, object, object]:
    broker = Vhost()
    producer = broker.open_session("p")
    broker.declare_queue("p", QueueSpec(name="q"))
    cons = broker.open_session("c")
    if consumer:
        broker.consume(cons, "q", prefetch=0)
    return broker, producer, cons


def stage_publish(n: int, consumer: bool) -> float:
    broker, producer, cons = broker_with_queue(consumer)
    started = time.perf_counter()
    for i in range(n):
        broker.publish(producer, Message(exchange="", routing_key="q", body=BODY))  # type: ignore[arg-type]
        if i % 1000 == 999:  # as the writers would: a full outbox stops dispatch
            broker.take_events(producer)  # type: ignore[arg-type]
            broker.take_events(cons)  # type: ignore[arg-type]
    return time.perf_counter() - started


def stage_deliver_and_ack(n: int) -> tuple[float, float]:
    """Encode each delivery (the writer's work); then decode multi-acks and settle them."""
    broker, producer, cons = broker_with_queue(True)
    client, server = open_pair()
    encode_time = ack_time = 0.0
    for first in range(1, n + 1, 1000):
        for _ in range(1000):
            broker.publish(producer, Message(exchange="", routing_key="q", body=BODY))  # type: ignore[arg-type]
        broker.take_events(producer)  # type: ignore[arg-type]
        started = time.perf_counter()
        for e in broker.take_events(cons):  # type: ignore[arg-type]
            if type(e) is Delivery:
                m = e.message
                tail = encode_deliver_tail(e.exchange, e.routing_key, m.body, m.properties)
                server.send_deliver(e.consumer_tag, e.delivery_tag, e.redelivered, tail)
        encode_time += time.perf_counter() - started
        acks = [Ack(delivery_tag=t, multiple=True) for t in range(first + 49, first + 1000, 50)]
        server.receive_data(send_all(client, acks))
        started = time.perf_counter()
        while (ev := server.next_event()) is not NEED_DATA:
            broker.ack(cons, ev.delivery_tag, multiple=True)  # type: ignore[arg-type]
        ack_time += time.perf_counter() - started
    return encode_time, ack_time


def stage_store(n: int) -> tuple[float, float]:
    """Persistent: journal each round's PutMessage records and write them in one transaction.

    Returns (CPU seconds, wall seconds): the wall time is mostly fsync, which the server
    overlaps with the next round (group commit) and so costs no CPU.
    """
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        store = SqliteStore(Path(tmp))
        broker = Vhost(durable=True)
        producer = broker.open_session("p")
        broker.declare_queue("p", QueueSpec(name="q", durable=True))
        assert broker.journal is not None
        store.write(broker.journal.take().records)
        props = Properties(persistent=True)
        message = Message(exchange="", routing_key="q", body=BODY, properties=props)
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(n):
            broker.publish(producer, message)  # type: ignore[arg-type]
            if i % 1000 == 999:
                batch = broker.journal.take()
                store.write(batch.records)
                broker.batch_committed(batch)
                broker.take_events(producer)  # type: ignore[arg-type]
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        store.close()
    return cpu, wall


def median_us(measure: Callable[[], float], n: int, runs: int) -> float:
    return statistics.median(measure() for _ in range(runs)) / n * 1e6


def main() -> None:
    gc.set_threshold(GC_THRESHOLD, 20, 10)  # as `mqroute server` runs
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    n, runs = args.messages, args.runs
    decode = median_us(lambda: stage_decode_publish(n), n, runs)
    route = median_us(lambda: stage_publish(n, False), n, runs)
    with_dispatch = median_us(lambda: stage_publish(n, True), n, runs)
    pairs = [stage_deliver_and_ack(n) for _ in range(runs)]
    encode = statistics.median(p[0] for p in pairs) / n * 1e6
    ack = statistics.median(p[1] for p in pairs) / n * 1e6
    stores = [stage_store(n) for _ in range(runs)]
    store_cpu = statistics.median(c for c, _ in stores) / n * 1e6
    commit_ms = statistics.median(w for _, w in stores) / (n / 1000) * 1e3
    rows = [
        ("decode Publish (frame → event, properties cached)", decode),
        ("route + enqueue + confirm bookkeeping (Vhost.publish)", route),
        ("dispatch to a consumer (tag, unacked, Delivery)", with_dispatch - route),
        ("encode Deliver (shared tail + per-delivery head)", encode),
        ("decode Ack (multiple, every 50) + settle + credit", ack),
    ]
    print(f"µs per message, medians of {runs} runs of {n:,} messages of 256 B\n")
    for label, value in rows:
        print(f"  {label:<58}{value:6.2f}")
    print(f"  {'sum':<58}{sum(v for _, v in rows):6.2f}")
    print(f"\n  {'persistent: journal + SQLite insert, CPU':<58}{store_cpu:6.2f}")
    print(f"  (one transaction of 1,000 messages takes {commit_ms:.1f} ms of wall time, fsync")
    print("  included; the server commits while the next round fills: group commit)")


if __name__ == "__main__":
    main()
