"""A durable backlog: publish N persistent messages with confirms and no consumer, then measure
the broker's memory, restart it, time the recovery, and drain the queue checking that order held.

Run by hand (it takes minutes for a million):

    .venv/bin/python benchmarks/backlog.py --count 1000000 --size 1024

Prints publish rate (persistent, confirms, 1,000 in flight), the server's RSS and peak RSS,
restart time (process start to listening, recovery included), RSS after recovery, and the
drain rate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import trio
from common import free_port, rss_mb, start_server

import mqroute


async def publish(url: str, count: int, size: int, delayed: bool) -> float:
    pad = os.urandom(max(size - 8, 0))
    headers = {"x-delay": 3_600_000} if delayed else None
    async with mqroute.connect(url) as conn:
        await conn.declare_queue("backlog", durable=True)
        started = time.monotonic()
        async with conn.publisher(max_in_flight=1000) as pub:
            for i in range(count):
                await pub.publish(
                    "", "backlog", i.to_bytes(8, "big") + pad, persistent=True, headers=headers
                )
                if i and i % 100_000 == 0:
                    print(f"    published {i:,}", flush=True)
        return count / (time.monotonic() - started)


async def drain(url: str, count: int) -> float:
    async with mqroute.connect(url) as conn:
        started = time.monotonic()
        got = 0
        async with conn.consume("backlog", prefetch=500) as messages:
            async for msg in messages:
                assert int.from_bytes(msg.body[:8], "big") == got, "out of order"
                got += 1
                if got % 100 == 0 or got == count:
                    await msg.ack(multiple=True)
                if got == count:
                    break
        return count / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument(
        "--delayed",
        action="store_true",
        help="publish with x-delay of an hour: a backlog of delayed messages (no drain)",
    )
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="mqroute-backlog-", dir=os.path.expanduser("~"))
    port = free_port()
    url = f"mqroute://127.0.0.1:{port}"
    try:
        server, startup = start_server(data_dir, port)
        print(f"empty start: {startup:.2f}s, RSS {rss_mb(server.pid)[0]:.0f} MB")
        rate = trio.run(publish, url, args.count, args.size, args.delayed)
        rss, peak = rss_mb(server.pid)
        print(
            f"published {args.count:,} x {args.size} B persistent with confirms: "
            f"{rate:,.0f} msg/s; server RSS {rss:.0f} MB (peak {peak:.0f} MB)"
        )
        server.terminate()
        server.wait()
        db = os.path.getsize(os.path.join(data_dir, "mqroute.db"))
        print(f"database {db / 2**20:.0f} MB")
        server, startup = start_server(data_dir, port)
        rss, peak = rss_mb(server.pid)
        print(
            f"restart with {args.count:,} messages on disk: {startup:.2f}s to listening; "
            f"RSS {rss:.0f} MB (peak {peak:.0f} MB)"
        )
        if args.delayed:
            server.terminate()
            server.wait()
            return
        rate = trio.run(drain, url, args.count)
        rss, peak = rss_mb(server.pid)
        print(f"drained {args.count:,}: {rate:,.0f} msg/s; RSS {rss:.0f} MB (peak {peak:.0f} MB)")
        server.terminate()
        server.wait()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
