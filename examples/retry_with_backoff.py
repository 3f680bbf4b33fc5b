"""Retries without spinning, poison messages parked, then redriven once the bug is fixed.

The "payments" queue holds a failing message back longer after each failure
(x-delayed-retry-min, linear), gives up after x-delivery-limit attempts and dead-letters it to
"payments.dlq". After the "fix", redrive sends the parked messages home and they succeed.

    python examples/retry_with_backoff.py
"""

from __future__ import annotations

import argparse
import logging
import os

import trio

import mqroute

ARGS = {
    "x-delayed-retry-min": 200,  # ms: 0.2 s, 0.4 s, 0.6 s…
    "x-delayed-retry-max": 1000,
    "x-delivery-limit": 3,
    "x-dead-letter-exchange": "payments.dlx",
}


async def main(url: str) -> None:
    async with mqroute.connect(url, client_name="retry demo") as conn:
        await conn.declare_exchange("payments.dlx", "fanout")
        await conn.declare_queue("payments.dlq")
        await conn.bind_queue("payments.dlq", "payments.dlx")
        await conn.declare_queue("payments", arguments=ARGS)
        await conn.publish("", "payments", b"charge 10 EUR to card 4242")
        await conn.publish("", "payments", b"charge 99 EUR to card 0000 (bad card)")

        bug_fixed = False
        start = trio.current_time()

        async def handle(msg: mqroute.Message) -> None:
            attempt = msg.headers.get("x-delivery-count", 0) + 1
            at = trio.current_time() - start
            if b"bad card" in msg.body and not bug_fixed:
                print(f"{at:5.2f}s  attempt {attempt}: {msg.body.decode()}  -> fails")
                raise RuntimeError("card declined")
            print(f"{at:5.2f}s  attempt {attempt}: {msg.body.decode()}  -> ok")

        # until_idle: stop once "payments" holds nothing ready or waiting for a retry.
        await mqroute.run_worker(conn, "payments", handle, requeue_on_error=True, until_idle=True)
        parked = await conn.declare_queue("payments.dlq", passive=True)
        print(
            f"parked in payments.dlq after {ARGS['x-delivery-limit'] + 1} attempts: "
            f"{parked.message_count} message"
        )

        bug_fixed = True
        moved = await conn.redrive("payments.dlq")
        print(f"bug fixed; redrove {moved} message back to 'payments'")
        msg = await conn.get("payments")
        assert msg is not None
        await handle(msg)
        await msg.ack()


if __name__ == "__main__":
    logging.getLogger("mqroute.worker").setLevel(logging.CRITICAL)  # the demo prints its own lines
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("MQROUTE_URL", "mqroute://127.0.0.1:5680"),
        help="the broker (default: $MQROUTE_URL, else mqroute://127.0.0.1:5680)",
    )
    trio.run(main, parser.parse_args().url)
