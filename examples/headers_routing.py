"""Headers routing: route by message headers instead of routing keys.

reports-pdf      x-match=all  format=pdf, type=report
eu-anything      x-match=any  region=eu, country=de

python examples/headers_routing.py
"""

from __future__ import annotations

import argparse
import os

import trio

import mqroute

BINDINGS = {
    "reports-pdf": {"x-match": "all", "format": "pdf", "type": "report"},
    "eu-anything": {"x-match": "any", "region": "eu", "country": "de"},
}
MESSAGES = [
    ("Q3 report", {"format": "pdf", "type": "report", "region": "us"}),
    ("Q3 report (csv)", {"format": "csv", "type": "report"}),
    ("invoice for Berlin", {"format": "pdf", "type": "invoice", "country": "de"}),
    ("EU summary", {"format": "pdf", "type": "report", "region": "eu"}),
]


async def main(url: str) -> None:
    async with mqroute.connect(url, client_name="headers demo") as conn:
        await conn.declare_exchange("documents", "headers")
        for queue, arguments in BINDINGS.items():
            await conn.declare_queue(queue)
            await conn.purge_queue(queue)
            await conn.bind_queue(queue, "documents", "", arguments)
        for body, headers in MESSAGES:
            await conn.publish("documents", "", body, headers=headers)
        for queue in BINDINGS:
            got = []
            while (msg := await conn.get(queue, auto_ack=True)) is not None:
                got.append(msg.body.decode())
            print(f"{queue:<12} got: {', '.join(got) or 'nothing'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("MQROUTE_URL", "mqroute://127.0.0.1:5680"),
        help="the broker (default: $MQROUTE_URL, else mqroute://127.0.0.1:5680)",
    )
    trio.run(main, parser.parse_args().url)
