"""Topic routing in a shop: order events go where their routing keys say.

inventory      binds order.*        (every order event, one word after "order")
notifications  binds *.created      (anything created: orders, users)
audit          binds #              (everything)
eu-shipping    binds order.shipped.eu

python examples/topic_routing.py
"""

from __future__ import annotations

import argparse
import os

import trio

import mqroute

BINDINGS = {
    "inventory": "order.*",
    "notifications": "*.created",
    "audit": "#",
    "eu-shipping": "order.shipped.eu",
}
EVENTS = ["order.created", "order.paid", "user.created", "order.shipped.eu", "order.shipped.us"]


async def main(url: str) -> None:
    async with mqroute.connect(url, client_name="shop") as conn:
        await conn.declare_exchange("shop", "topic", durable=True)
        for queue, pattern in BINDINGS.items():
            await conn.declare_queue(queue, durable=True)
            await conn.purge_queue(queue)  # a clean demo on every run
            await conn.bind_queue(queue, "shop", pattern)
        async with conn.publisher() as pub:
            for key in EVENTS:
                await pub.publish(
                    "shop", key, f'{{"event": "{key}"}}', content_type="application/json"
                )
        for queue, pattern in BINDINGS.items():
            keys = []
            while (msg := await conn.get(queue)) is not None:
                keys.append(msg.routing_key)
                await msg.ack()
            print(f"{queue:<14} {pattern:<17} got {', '.join(keys) or 'nothing'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("MQROUTE_URL", "mqroute://127.0.0.1:5680"),
        help="the broker (default: $MQROUTE_URL, else mqroute://127.0.0.1:5680)",
    )
    trio.run(main, parser.parse_args().url)
