"""The cost of the broker's timer with many expiring or delayed messages (core only, no I/O).

    .venv/bin/python benchmarks/ttl_tick.py --pending 1000000

Fills one queue with N messages, each with its own TTL, then times: a tick with nothing due
(what every timer wake-up costs), the next-deadline lookup, and expiring 1,000 due messages.
Baseline in the same run: the same publishes without TTL.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from mqroute.core.vhost import Vhost
from mqroute.model import Message, Properties, QueueSpec


def fill(pending: int, with_ttl: bool, delayed: bool = False) -> tuple[Vhost, float]:
    broker = Vhost()
    broker.declare_queue("o", QueueSpec(name="q"), now=1_700_000_000.0)
    session = broker.open_session("o")
    messages = [
        Message(
            exchange="",
            routing_key="q",
            body=b"x" * 16,
            properties=Properties(
                expiration=str(random.randint(60_000, 3_600_000)) if with_ttl else None,
                headers={"x-delay": random.randint(60_000, 3_600_000)} if delayed else None,
            ),
        )
        for _ in range(pending)
    ]
    started = time.perf_counter()
    for message in messages:
        broker.publish(session, message)
        if len(session._pending) > 10_000:
            session.take_events()
    return broker, time.perf_counter() - started


def timed(fn: object, repeat: int = 7) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pending", type=int, default=1_000_000)
    args = parser.parse_args()
    _, plain_fill = fill(args.pending, with_ttl=False)
    broker, ttl_fill = fill(args.pending, with_ttl=True)
    print(
        f"publish {args.pending:,} with per-message TTL: {ttl_fill:.2f}s "
        f"(without TTL {plain_fill:.2f}s, ratio {ttl_fill / plain_fill:.2f})"
    )
    print(f"tick with nothing due:   {timed(broker.expire) * 1e6:8.1f} µs")
    print(f"next deadline lookup:    {timed(broker.next_deadline) * 1e6:8.1f} µs")
    q = broker.queues["q"]
    due = sorted(e.expires_at for e in q.ready_entries() if e.expires_at)[999]
    started = time.perf_counter()
    expired = broker.expire(now=due)
    took = time.perf_counter() - started
    print(
        f"expire {expired:,} due messages: {took * 1e3:.2f} ms ({took / expired * 1e6:.1f} µs each)"
    )
    print(f"queue still holds {len(q):,} ready messages")
    later, delayed_fill = fill(args.pending, with_ttl=False, delayed=True)
    print(
        f"publish {args.pending:,} delayed (x-delay): {delayed_fill:.2f}s "
        f"(ratio to plain {delayed_fill / plain_fill:.2f})"
    )
    print(f"tick with {args.pending:,} delayed, nothing due: {timed(later.expire) * 1e6:8.1f} µs")
    dq = later.queues["q"]
    due = sorted(e[0] for e in dq._delayed)[999]
    started = time.perf_counter()
    later.expire(now=due)
    took = time.perf_counter() - started
    print(f"promote 1,000 due delayed messages: {took * 1e3:.2f} ms; ready now {len(dq):,}")


if __name__ == "__main__":
    main()
