"""Effectively exactly-once: at-least-once delivery plus a consumer that remembers message ids.

The payment below arrives three times — a publisher retry after a lost confirm, and a
redelivery after a consumer crashed before its ack — and is charged once.

    python examples/idempotent_consumer.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import trio

import mqroute


async def main(url: str, db: Path) -> None:
    seen = mqroute.ProcessedIds(db)
    charges = []
    async with mqroute.connect(url, client_name="idempotency demo") as conn:
        await conn.declare_queue("charges")
        await conn.purge_queue("charges")
        for _ in range(2):  # the publisher retries: same message_id
            await conn.publish("", "charges", b"charge 10 EUR", message_id="payment-1")

        # A consumer takes the first copy, charges and records it, then crashes before its
        # ack leaves: the broker will deliver that copy again.
        crashed = mqroute.connect(url, client_name="crashing consumer")
        await crashed.open()
        first = await crashed.get("charges")
        assert first is not None and first.message_id is not None
        charges.append(first.message_id)
        seen.record(first.message_id)
        print(f"charged {first.message_id}, then crashed before acking")
        await crashed.close(polite=False)

        # Every copy that comes after is recognised and acked without charging again. A
        # consumer (not a get) waits for the crashed copy: the broker requeues it when it
        # sees that connection's socket close, a moment after close() returned.
        async with conn.consume("charges", prefetch=1) as messages:
            for _ in range(2):
                msg = await anext(messages)
                async with seen.once(msg) as first_time:
                    if first_time:
                        charges.append(msg.message_id)
                    else:
                        print(f"skipped duplicate {msg.message_id} (redelivered={msg.redelivered})")
    print(f"charges made: {len(charges)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("MQROUTE_URL", "mqroute://127.0.0.1:5680"),
        help="the broker (default: $MQROUTE_URL, else mqroute://127.0.0.1:5680)",
    )
    parser.add_argument(
        "--db", type=Path, help="where processed ids are kept (default: a temp file)"
    )
    args = parser.parse_args()
    db = args.db or Path(tempfile.mkdtemp()) / "processed.db"
    trio.run(main, args.url, db)
