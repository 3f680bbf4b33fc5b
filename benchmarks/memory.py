"""Broker memory with many idle queues and many idle connections, mqroute beside RabbitMQ.

    .venv/bin/python benchmarks/memory.py --queues 10000 --connections 1000

For each broker: RSS when idle, after declaring ``--queues`` empty queues, and with
``--connections`` idle client connections open (the queues deleted first). mqroute is a fresh
``mqroute server`` process; RabbitMQ is the running one on 127.0.0.1:5672 (its beam.smp), skipped
with a message when there is none. Printed: the RSS and the cost per queue / per connection.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import time

import trio
from common import mqroute_server, rss_mb

import mqroute


def settle() -> None:
    time.sleep(1.0)  # let allocators and the Erlang VM settle before reading RSS


async def mqroute_queues(url: str, count: int, delete: bool = False) -> None:
    async with mqroute.connect(url, client_name="memory bench") as conn:
        for i in range(count):
            if delete:
                await conn.delete_queue(f"idle-{i}")
            else:
                await conn.declare_queue(f"idle-{i}")


async def hold_connections(url: str, count: int, measure: trio.Event, done: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        opened = 0

        async def one(i: int) -> None:
            nonlocal opened
            async with mqroute.connect(url, client_name=f"idle {i}"):
                opened += 1
                if opened == count:
                    measure.set()
                await done.wait()

        for i in range(count):
            nursery.start_soon(one, i)


def measure_mqroute(queues: int, connections: int) -> dict[str, float]:
    with mqroute_server() as (server, url):
        settle()
        idle = rss_mb(server.pid)[0]
        trio.run(mqroute_queues, url, queues)
        settle()
        with_queues = rss_mb(server.pid)[0]
    with mqroute_server() as (server, url):  # a fresh one: freed memory is not returned

        async def connections_rss() -> float:
            measure, done = trio.Event(), trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hold_connections, url, connections, measure, done)
                await measure.wait()
                await trio.sleep(1.0)
                value = rss_mb(server.pid)[0]
                done.set()
            return value

        settle()
        idle2 = rss_mb(server.pid)[0]
        with_connections = trio.run(connections_rss)
    return {
        "idle": idle,
        "queues": with_queues,
        "idle2": idle2,
        "connections": with_connections,
        "opened": connections,
    }


def beam_pid() -> int | None:
    out = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    return pids[0] if pids else None


def measure_rabbitmq(queues: int, connections: int) -> dict[str, float] | None:
    import pika

    pid = beam_pid()
    if pid is None:
        return None
    params = pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F")
    settle()
    idle = rss_mb(pid)[0]
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    for i in range(queues):
        ch.queue_declare(f"idle-{i}")
    settle()
    with_queues = rss_mb(pid)[0]
    for i in range(queues):
        ch.queue_delete(f"idle-{i}")
    conn.close()
    settle()
    idle2 = rss_mb(pid)[0]
    held = []
    try:
        for _ in range(connections):
            try:
                held.append(pika.BlockingConnection(params))
            except pika.exceptions.AMQPError as exc:
                print(f"RabbitMQ refused connection {len(held) + 1}: {type(exc).__name__}")
                break
        settle()
        with_connections = rss_mb(pid)[0]
    finally:
        for c in held:
            c.close()
    return {
        "idle": idle,
        "queues": with_queues,
        "idle2": idle2,
        "connections": with_connections,
        "opened": len(held),
    }


def report(name: str, m: dict[str, float], queues: int, connections: int) -> None:
    per_queue = (m["queues"] - m["idle"]) * 1024 / queues
    per_conn = (m["connections"] - m["idle2"]) * 1024 / max(m["opened"], 1)
    print(
        f"{name:<10}{m['idle']:>10.0f}{m['queues']:>16.0f}{m['connections']:>20.0f}"
        f"{per_queue:>14.1f}{per_conn:>14.1f}"
    )
    if m["opened"] != connections:
        print(f"          (only {m['opened']:,} connections could be opened)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queues", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=1_000)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the clients
    mq = measure_mqroute(args.queues, args.connections)
    try:
        rabbit = measure_rabbitmq(args.queues, args.connections)
    except Exception as exc:  # report what RabbitMQ did and go on
        print(f"RabbitMQ measurement failed: {type(exc).__name__}: {exc}")
        rabbit = None
    print(
        f"\nRSS in MB; {args.queues:,} idle queues; {args.connections:,} idle connections\n"
        f"{'broker':<10}{'idle':>10}{'with queues':>16}{'with connections':>20}"
        f"{'KB/queue':>14}{'KB/conn':>14}"
    )
    report("mqroute", mq, args.queues, args.connections)
    if rabbit is None:
        print("RabbitMQ  (not running on 127.0.0.1:5672: skipped)")
    else:
        report("RabbitMQ", rabbit, args.queues, args.connections)


if __name__ == "__main__":
    main()
