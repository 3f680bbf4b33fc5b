"""Does the hot path stay flat as the broker grows? The broker core, in process, no I/O.

    .venv/bin/python benchmarks/scaling.py

Two tables, each a median of --runs timings (µs per message):

- publish cost against the number of topic bindings on the exchange (10 … 100,000). Ten
  bindings ``svc<i>.*.event`` match the published keys (one each); the others,
  ``other<i>.*.event`` to 100 queues, match none, so the work a message needs stays the same
  and only the unrelated bindings grow.
- dispatch cost against the number of consumers on one queue (1 … 1,000), each with prefetch
  10: publish, deliver round robin, ack every delivery multiple-at-once per consumer batch.

The garbage collector is set as ``mqroute server`` sets it.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from mqroute.core.vhost import Vhost
from mqroute.model import ExchangeSpec, Message, QueueSpec
from mqroute.server.startup import GC_THRESHOLD


def topic_publish_us(bindings: int, messages: int) -> float:
    broker = Vhost()
    session = broker.open_session("bench")
    broker.declare_exchange(ExchangeSpec(name="t", type="topic"))
    for q in range(100):
        broker.declare_queue("bench", QueueSpec(name=f"q{q}"))
    for i in range(10):  # the bindings the published keys match
        broker.bind_queue("bench", f"q{i}", "t", f"svc{i}.*.event")
    for i in range(bindings - 10):  # unrelated: same shape, other first words
        broker.bind_queue("bench", f"q{i % 100}", "t", f"other{i}.*.event")
    batch = [
        Message(exchange="t", routing_key=f"svc{i % 10}.created.event", body=b"x" * 256)
        for i in range(1000)
    ]
    started = time.perf_counter()
    for n in range(messages // len(batch)):
        for m in batch:
            broker.publish(session, m)
        broker.take_events(session)
        if n % 10 == 9:
            for q in range(10):
                broker.purge_queue("bench", f"q{q}")
    return (time.perf_counter() - started) / messages * 1e6


def dispatch_us(consumers: int, messages: int) -> float:
    broker = Vhost()
    producer = broker.open_session("producer")
    broker.declare_queue("producer", QueueSpec(name="work"))
    sessions = []
    for c in range(consumers):
        s = broker.open_session(f"c{c}")
        broker.consume(s, "work", prefetch=10)
        sessions.append(s)
    m = Message(exchange="", routing_key="work", body=b"x" * 256)
    started = time.perf_counter()
    done = 0
    while done < messages:
        for _ in range(10 * consumers):  # exactly what the consumers' credit can take
            broker.publish(producer, m)
        broker.take_events(producer)
        for s in sessions:  # every consumer acks what it holds, as a client would
            tags = [e.delivery_tag for e in broker.take_events(s) if hasattr(e, "delivery_tag")]
            if tags:
                broker.ack(s, max(tags), multiple=True)
                done += len(tags)
    return (time.perf_counter() - started) / done * 1e6


def table(title: str, column: str, sizes: list[int], measure, messages: int, runs: int) -> None:  # type: ignore[no-untyped-def]
    print(f"\n{title}")
    print(f"{column:>12}  {'µs/message':>11}  {'vs smallest':>11}")
    first = None
    for size in sizes:
        value = statistics.median(measure(size, messages) for _ in range(runs))
        first = first or value
        print(f"{size:>12,}  {value:>11.2f}  {value / first:>10.2f}x", flush=True)


def main() -> None:
    gc.set_threshold(GC_THRESHOLD, 20, 10)  # as `mqroute server` runs
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    table(
        "publish to a topic exchange (each key matches 1 of 10 bindings; the rest unrelated), "
        "medians of "
        f"{args.runs} runs of {args.messages:,} messages",
        "bindings",
        [10, 100, 1_000, 10_000, 100_000],
        topic_publish_us,
        args.messages,
        args.runs,
    )
    table(
        "publish + dispatch + ack on one queue (prefetch 10 each), medians of "
        f"{args.runs} runs of {args.messages:,} messages",
        "consumers",
        [1, 10, 100, 1_000],
        dispatch_us,
        args.messages,
        args.runs,
    )


if __name__ == "__main__":
    main()
