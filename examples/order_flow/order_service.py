"""Places orders: payment, an immediate answer to the customer, then an order.created event."""

from __future__ import annotations

import argparse
import json
import os

import topology
import trio

import mqroute


async def main(url: str, orders: int, first: int) -> None:
    async with mqroute.connect(url, client_name="order service") as conn:
        await topology.declare(conn)
        for order_id in range(first, first + orders):
            # ... take the payment here ...
            event = {"orderId": order_id, "items": [{"sku": "tea-001", "qty": 2}]}
            await conn.publish(
                "shop",
                "order.created",
                json.dumps(event),
                persistent=True,
                content_type="application/json",
                message_id=f"order-{order_id}",
            )
            print(f"order {order_id} paid and confirmed to the customer", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("MQROUTE_URL", "mqroute://127.0.0.1:5680"),
        help="the broker (default: $MQROUTE_URL, else mqroute://127.0.0.1:5680)",
    )
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--first", type=int, default=1, help="the first order id")
    args = parser.parse_args()
    trio.run(main, args.url, args.orders, args.first)
