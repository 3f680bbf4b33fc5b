"""Publish/subscribe with a fanout exchange: every subscriber gets every message.

Each subscriber declares its own server-named, exclusive queue and binds it to the "events"
exchange; the queue disappears when the subscriber disconnects.

    python examples/pubsub.py --subscribers 3 --messages 4
"""

from __future__ import annotations

import argparse
import os

import trio

import mqroute


async def subscriber(url: str, n: int, expect: int, ready: trio.Event) -> None:
    async with mqroute.connect(url, client_name=f"subscriber {n}") as conn:
        queue = await conn.declare_queue("", exclusive=True)
        await conn.bind_queue(queue.name, "events")
        ready.set()
        got = []
        async with conn.consume(queue.name, auto_ack=True) as messages:
            async for msg in messages:
                got.append(msg.body.decode())
                if len(got) == expect:
                    break
        print(f"subscriber {n} ({queue.name}) got: {', '.join(got)}")


async def main(url: str, subscribers: int, messages: int) -> None:
    async with mqroute.connect(url, client_name="publisher") as conn:
        await conn.declare_exchange("events", "fanout")
        async with trio.open_nursery() as nursery:
            for n in range(1, subscribers + 1):
                ready = trio.Event()
                nursery.start_soon(subscriber, url, n, messages, ready)
                await ready.wait()  # bound before we publish, so nothing is missed
            for i in range(1, messages + 1):
                await conn.publish("events", "", f"event {i}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("MQROUTE_URL", "mqroute://127.0.0.1:5680"),
        help="the broker (default: $MQROUTE_URL, else mqroute://127.0.0.1:5680)",
    )
    parser.add_argument("--subscribers", type=int, default=3)
    parser.add_argument("--messages", type=int, default=4)
    args = parser.parse_args()
    trio.run(main, args.url, args.subscribers, args.messages)
