"""Reserves stock for every new order; whatever arrived while it was down waits for it."""

from __future__ import annotations

import argparse
import json
import os

import topology
import trio

import mqroute


async def main(url: str, exit_after: int | None) -> None:
    async with mqroute.connect(url, client_name="inventory service") as conn:
        await topology.declare(conn)
        handled = 0
        async with conn.consume("inventory", prefetch=10) as events:
            async for msg in events:
                async with msg.process(requeue=True):
                    order = json.loads(msg.body)
                    print(f"inventory: reserved stock for order {order['orderId']}", flush=True)
                handled += 1
                if exit_after is not None and handled >= exit_after:
                    break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("MQROUTE_URL", "mqroute://127.0.0.1:5680"),
        help="the broker (default: $MQROUTE_URL, else mqroute://127.0.0.1:5680)",
    )
    parser.add_argument("--exit-after", type=int)
    args = parser.parse_args()
    trio.run(main, args.url, args.exit_after)
