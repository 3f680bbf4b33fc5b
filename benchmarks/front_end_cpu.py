"""Where an AMQP message's microseconds go: the server's CPU per message on each front end.

    .venv/bin/python benchmarks/front_end_cpu.py --count 50000 --runs 3

Clients bound the rates of pika and aio-pika (they need more CPU per message than the broker),
so a rate says little about the front end. This measures the server process's own CPU time
(user + system, from /proc) over the same transient workload (256 B, prefetch 100, multi-ack
every 50): through the AMQP listener driven by aio-pika, and through the native port driven by
mqroute's SDK. Printed: µs of server CPU per message, medians, and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from collections.abc import Iterator

import compare_rabbitmq as cr
from common import free_port, mqroute_server

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
    opts = BenchOptions(count=args.count, size=256, prefetch=100, multi_ack_every=50)
    per_message: dict[str, list[float]] = {"AMQP": [], "native": []}
    for i in range(args.runs):
        for front in per_message:
            with server() as (pid, url, amqp_url):
                cr.RABBIT_URL = amqp_url
                os.environ["MQROUTE_RABBITMQ_URL"] = amqp_url
                before = cpu_seconds(pid)
                if front == "AMQP":
                    run(opts, cr.AioPikaDriver)
                else:
                    import attrs

                    run(attrs.evolve(opts, url=url), MQRouteDriver)
                user, system = (b - a for a, b in zip(before, cpu_seconds(pid), strict=True))
            per_message[front].append((user + system) / args.count * 1e6)
            print(
                f"  run {i + 1} {front:6}: {per_message[front][-1]:6.1f} µs of server CPU "
                f"({user / args.count * 1e6:.1f} user, {system / args.count * 1e6:.1f} system)"
            )
    amqp, native = (statistics.median(per_message[k]) for k in ("AMQP", "native"))
    print(f"server CPU per message: AMQP {amqp:.1f} µs, native {native:.1f} µs")
    print(f"so the AMQP front end alone runs at {native / amqp:.2f}x the native one's rate")


if __name__ == "__main__":
    main()
