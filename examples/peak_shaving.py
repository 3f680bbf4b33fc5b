"""Peak shaving: a burst of messages arrives at once; a few workers drain it at their own pace.

The queue absorbs the burst (publishing finishes long before the work does); the workers take
one message at a time per task, and a live line shows the backlog going down.

    python examples/peak_shaving.py --messages 100000 --workers 4
"""

from __future__ import annotations

import argparse
import os
import sys

import trio

import mqroute


async def main(url: str, messages: int, workers: int, work_ms: float) -> None:
    async with mqroute.connect(url, client_name="burst") as conn:
        await conn.declare_queue("signups")
        await conn.purge_queue("signups")
        started = trio.current_time()
        async with conn.publisher(max_in_flight=2000) as pub:
            for i in range(messages):
                await pub.publish("", "signups", f"welcome email #{i}")
        burst = trio.current_time() - started
        print(
            f"burst: {messages:,} messages queued in {burst:.2f}s ({messages / burst:,.0f} msg/s)",
            flush=True,
        )

        done = 0
        stop = trio.Event()

        async def send_welcome_email(msg: mqroute.Message) -> None:
            nonlocal done
            await trio.sleep(work_ms / 1000)  # the slow part: talking to a mail server
            done += 1
            if done == messages:
                stop.set()

        def show() -> None:
            elapsed = trio.current_time() - started - burst
            rate = done / elapsed if elapsed > 0 else 0
            sys.stderr.write(
                f"\r  drained {done:,}/{messages:,}  backlog "
                f"{messages - done:,}  {rate:,.0f} msg/s   "
            )
            sys.stderr.flush()

        async def progress() -> None:
            while not stop.is_set():
                show()
                with trio.move_on_after(0.25):
                    await stop.wait()
            show()
            sys.stderr.write("\n")

        async with mqroute.connect(url, client_name="workers") as worker_conn:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(progress)
                await mqroute.run_worker(
                    worker_conn,
                    "signups",
                    send_welcome_email,
                    concurrency=workers,
                    stop=stop,
                    handle_signals=False,
                )
        total = trio.current_time() - started
        print(
            f"drained by {workers} workers in {total - burst:.2f}s; the backlog peaked at "
            f"{messages:,} and nothing was lost",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("MQROUTE_URL", "mqroute://127.0.0.1:5680"),
        help="the broker (default: $MQROUTE_URL, else mqroute://127.0.0.1:5680)",
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--work-ms", type=float, default=0.0, help="time each message takes")
    args = parser.parse_args()
    trio.run(main, args.url, args.messages, args.workers, args.work_ms)
