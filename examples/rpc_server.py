"""An RPC server: answers "fib N" requests on the "rpc.fib" queue (see rpc_client.py).

python examples/rpc_server.py
"""

from __future__ import annotations

import argparse
import os

import trio

import mqroute


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


async def main(url: str, requests: int | None) -> None:
    async with mqroute.connect(url, client_name="rpc server") as conn:
        await conn.declare_queue("rpc.fib")
        answered = 0
        done = trio.Event()

        async def answer(request: mqroute.Message) -> bytes:
            nonlocal answered
            n = int(request.body)
            print(f"fib({n}) requested", flush=True)
            answered += 1
            if requests is not None and answered >= requests:
                done.set()  # the demo stops once this reply is sent
            return str(fib(n)).encode()

        print("waiting for requests on 'rpc.fib'", flush=True)
        await mqroute.serve_rpc(conn, "rpc.fib", answer, stop=done)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("MQROUTE_URL", "mqroute://127.0.0.1:5680"),
        help="the broker (default: $MQROUTE_URL, else mqroute://127.0.0.1:5680)",
    )
    parser.add_argument("--requests", type=int, help="stop after answering this many")
    args = parser.parse_args()
    trio.run(main, args.url, args.requests)
