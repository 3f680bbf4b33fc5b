"""A worker: take tasks from the "tasks" queue one at a time, do them, ack them.

With prefetch=1 the broker gives a worker its next task only after it acked the last one, so a
slow worker is not handed a pile of work while a fast one idles (fair dispatch). Start two:

    python examples/worker.py --name A
    python examples/worker.py --name B

Kill one in the middle of a task (Ctrl-C, or --die-after 1): the task it held was never acked,
so the broker gives it to the other worker, marked redelivered.
"""

from __future__ import annotations

import argparse
import os

import trio

import mqroute


async def main(url: str, name: str, exit_after: int | None, die_after: int | None) -> None:
    async with mqroute.connect(url, client_name=f"worker {name}") as conn:
        await conn.declare_queue("tasks", durable=True)
        done = 0
        async with conn.consume("tasks", prefetch=1) as tasks:
            print(f"[{name}] waiting for tasks", flush=True)
            async for msg in tasks:
                text = msg.body.decode()
                again = " (redelivered)" if msg.redelivered else ""
                print(f"[{name}] got {text.split(' ')[0]} {text.split(' ')[1]}{again}", flush=True)
                if die_after is not None and done + 1 >= die_after:
                    print(f"[{name}] dying in the middle of the task", flush=True)
                    os._exit(1)  # no ack, no goodbye: the broker sees the connection drop
                await trio.sleep(text.count(".") / 10)  # the "work"
                await msg.ack()
                done += 1
                if exit_after is not None and done >= exit_after:
                    break
        print(f"[{name}] done {done} tasks", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("MQROUTE_URL", "mqroute://127.0.0.1:5680"),
        help="the broker (default: $MQROUTE_URL, else mqroute://127.0.0.1:5680)",
    )
    parser.add_argument("--name", default=str(os.getpid()))
    parser.add_argument("--exit-after", type=int, help="stop after this many tasks")
    parser.add_argument("--die-after", type=int, help="crash without ack on this task number")
    args = parser.parse_args()
    try:
        trio.run(main, args.url, args.name, args.exit_after, args.die_after)
    except KeyboardInterrupt:
        pass
