"""An RPC client: asks rpc_server.py for Fibonacci numbers and waits for each answer.

Replies come back over direct reply-to: no reply queue is declared per call.

    python examples/rpc_client.py 10 20 30
"""

from __future__ import annotations

import argparse
import os

import trio

import mqroute


async def main(url: str, numbers: list[int]) -> None:
    async with mqroute.connect(url, client_name="rpc client") as conn:
        await conn.declare_queue("rpc.fib")  # requests wait there if the server starts later
        for n in numbers:
            try:
                reply = await conn.call("", "rpc.fib", str(n), timeout=5)
            except mqroute.RequestTimeout:
                print(f"fib({n}): no answer within 5 s (is rpc_server.py running?)")
                continue
            print(f"fib({n}) = {reply.body.decode()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("numbers", type=int, nargs="*", default=[10, 20, 30])
    parser.add_argument(
        "--url",
        default=os.environ.get("MQROUTE_URL", "mqroute://127.0.0.1:5680"),
        help="the broker (default: $MQROUTE_URL, else mqroute://127.0.0.1:5680)",
    )
    args = parser.parse_args()
    trio.run(main, args.url, args.numbers)
