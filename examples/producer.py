"""Send tasks to the "tasks" queue (the worker pattern; run worker.py in other terminals).

Each task's body says how long it takes, in tenths of a second: "task 3 ..." takes 0.3 s,
like the dots in RabbitMQ's tutorial.

    python examples/producer.py --tasks 10
"""

from __future__ import annotations

import argparse
import os

import trio

import mqroute


async def main(url: str, tasks: int, work: int) -> None:
    async with mqroute.connect(url, client_name="producer") as conn:
        await conn.declare_queue("tasks", durable=True)
        async with conn.publisher() as pub:
            for n in range(1, tasks + 1):
                body = f"task {n} " + "." * work
                await pub.publish("", "tasks", body, persistent=True, message_id=f"task-{n}")
        print(f"sent {tasks} tasks, all confirmed by the broker")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("MQROUTE_URL", "mqroute://127.0.0.1:5680"),
        help="the broker (default: $MQROUTE_URL, else mqroute://127.0.0.1:5680)",
    )
    parser.add_argument("--tasks", type=int, default=10, help="how many tasks to send")
    parser.add_argument("--work", type=int, default=3, help="tenths of a second per task")
    args = parser.parse_args()
    trio.run(main, args.url, args.tasks, args.work)
