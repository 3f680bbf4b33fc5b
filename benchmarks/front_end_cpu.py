"""The AMQP front end against the native one on the same workload: rate and server CPU.

    .venv/bin/python benchmarks/front_end_cpu.py --count 50000 --runs 5

The workload is transient, 256 B, prefetch 100, multi-ack every 50, a confirm window of 1,000,
one producer and one consumer. It runs through three clients, in turn, each on a fresh server:

- ``native``: mqroute's SDK on the native port;
- ``AMQP lean``: raw_amqp.py on the AMQP port, a client that writes publishes in batches and
  acks as the SDK does, so the client is no bottleneck and the two rates compare front ends;
- ``AMQP aio-pika``: aio-pika, a real client that writes each publish alone; it needs more
  CPU per message than the broker, so its rate is the client's.

Printed per run: the end-to-end rate and the server process's CPU time (user + system, from
/proc) per message; then medians and their ratios to the native run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from collections.abc import Iterator

import attrs
import compare_rabbitmq as cr
from common import free_port, mqroute_server
from raw_amqp import RawAmqpDriver

from mqroute.bench.runner import BenchOptions, MQRouteDriver, run


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


@contextlib.contextmanager
def server() -> Iterator[tuple[int, str, str]]:
    port = free_port()
    with mqroute_server("--amqp-port", str(port)) as (process, url):
        yield process.pid, url, f"amqp://guest:guest@127.0.0.1:{port}/"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    opts = BenchOptions(count=args.count, size=256, prefetch=100, multi_ack_every=50, confirm=1000)
    drivers = {"native": MQRouteDriver, "AMQP lean": RawAmqpDriver, "AMQP aio-pika": None}
    cpu: dict[str, list[float]] = {k: [] for k in drivers}
    rate: dict[str, list[float]] = {k: [] for k in drivers}
    for i in range(args.runs):
        for front, driver in drivers.items():
            with server() as (pid, url, amqp_url):
                cr.RABBIT_URL = amqp_url
                os.environ["MQROUTE_RABBITMQ_URL"] = amqp_url
                before = cpu_seconds(pid)
                if driver is MQRouteDriver:
                    result = run(attrs.evolve(opts, url=url), MQRouteDriver)
                else:
                    result = run(opts, driver or cr.AioPikaDriver)
                user, system = (b - a for a, b in zip(before, cpu_seconds(pid), strict=True))
            cpu[front].append((user + system) / args.count * 1e6)
            rate[front].append(result["end_to_end_rate"])
            print(
                f"  run {i + 1} {front:13}: {rate[front][-1]:8,.0f} msg/s, "
                f"{cpu[front][-1]:6.1f} µs of server CPU a message "
                f"({user / args.count * 1e6:.1f} user, {system / args.count * 1e6:.1f} system)"
            )
    native_rate, native_cpu = statistics.median(rate["native"]), statistics.median(cpu["native"])
    print(f"\nmedians of {args.runs} runs:")
    for front in drivers:
        r, c = statistics.median(rate[front]), statistics.median(cpu[front])
        print(
            f"  {front:13}: {r:8,.0f} msg/s ({r / native_rate:.2f}x native), "
            f"{c:6.1f} µs server CPU a message ({native_cpu / c:.2f}x native's efficiency)"
        )


if __name__ == "__main__":
    main()
