"""A flood into a queue nobody consumes, against a memory watermark: RSS and losses.

    .venv/bin/python benchmarks/flood.py --messages 10000000 --watermark 4GiB

Starts ``mqroute server`` (its own data directory) with ``--memory-high-watermark``, then
publishes ``--messages`` transient messages of ``--size`` bytes with confirms (1,000 in flight)
into one queue with no consumer, sampling the server's RSS every second. Past half the
watermark the broker pages bodies to disk; if memory still reaches the watermark, the
publisher is blocked (the script says for how long). Then a consumer drains the queue and
checks that every confirmed message arrives once, in order. Both phases are bounded in time
(``--max-seconds`` each); the script stops by itself.

Printed: confirmed, peak RSS beside the watermark, the page file's peak size, time blocked,
drained, lost (confirmed but not drained: must be 0).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import trio
from common import mqroute_server, rss_mb

import mqroute
from mqroute.server.resources import parse_size


def page_file_mb(pid: int) -> float:
    """Size of the server's page file (found through its open files)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith("paging.db"):
            return os.path.getsize(target) / 1e6
    return 0.0


async def run(args: argparse.Namespace, url: str, pid: int) -> dict[str, float]:
    peak = {"rss": 0.0, "pages": 0.0}
    blocked_for = 0.0

    async def sample() -> None:
        while True:
            peak["rss"] = max(peak["rss"], rss_mb(pid)[0])
            peak["pages"] = max(peak["pages"], page_file_mb(pid))
            await trio.sleep(1)

    body_tail = b"x" * max(args.size - 8, 0)
    confirmed = drained = 0
    in_order = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        async with mqroute.connect(url) as conn:
            await conn.declare_queue("flood")
            started = last = time.monotonic()
            with trio.move_on_after(args.max_seconds):
                async with conn.publisher(max_in_flight=1000) as pub:
                    for i in range(args.messages):
                        await pub.publish("", "flood", b"%08d" % i + body_tail)
                        if conn.blocked is not None:
                            t0 = time.monotonic()
                            while conn.blocked is not None:
                                await trio.sleep(0.01)
                            blocked_for += time.monotonic() - t0
                        if i % 10_000 == 0 and time.monotonic() - last > 5:
                            last = time.monotonic()
                            rate = i / (last - started)
                            print(
                                f"  published {i:>11,}  {rate:>8,.0f} msg/s  rss "
                                f"{rss_mb(pid)[0]:>7,.0f} MB  page file "
                                f"{page_file_mb(pid):>7,.0f} MB",
                                flush=True,
                            )
                        confirmed = i + 1  # the publisher raises on a nack
            # publisher() waited for every confirm on exit (or the time bound cut it short,
            # in which case the last up to 1,000 may be unconfirmed: counted as not confirmed)
            publish_seconds = time.monotonic() - started
            confirmed = (
                max(confirmed - 1000, 0) if publish_seconds >= args.max_seconds else confirmed
            )
            print(f"  published {confirmed:,} confirmed in {publish_seconds:,.0f}s; draining")
            started = time.monotonic()
            expected = 0
            with trio.move_on_after(args.max_seconds):
                async with conn.consume("flood", prefetch=1000, auto_ack=True) as messages:
                    async for msg in messages:
                        n = int(msg.body[:8])
                        in_order = in_order and n == expected
                        expected = n + 1
                        drained += 1
                        if drained >= confirmed:
                            break
            drain_seconds = time.monotonic() - started
        nursery.cancel_scope.cancel()
    return {
        "confirmed": confirmed,
        "publish_seconds": publish_seconds,
        "blocked_seconds": blocked_for,
        "drained": drained,
        "drain_seconds": drain_seconds,
        "in_order": in_order,
        "peak_rss_mb": peak["rss"],
        "peak_page_file_mb": peak["pages"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--watermark", default="4GiB")
    parser.add_argument("--max-seconds", type=float, default=1200.0)
    args = parser.parse_args()
    watermark_mb = parse_size(args.watermark) / 1e6
    with mqroute_server("--memory-high-watermark", args.watermark) as (server, url):
        result = trio.run(run, args, url, server.pid)
    lost = result["confirmed"] - result["drained"]
    print(
        f"{result['confirmed']:,} confirmed of {args.messages:,} x {args.size} B; "
        f"peak RSS {result['peak_rss_mb']:,.0f} MB under a watermark of {watermark_mb:,.0f} MB "
        f"({result['peak_rss_mb'] / watermark_mb:.0%}); page file peak "
        f"{result['peak_page_file_mb']:,.0f} MB; blocked {result['blocked_seconds']:.1f}s; "
        f"published in {result['publish_seconds']:,.0f}s, drained {result['drained']:,} in "
        f"{result['drain_seconds']:,.0f}s, in order: {result['in_order']}; lost: {lost}"
    )


if __name__ == "__main__":
    main()
