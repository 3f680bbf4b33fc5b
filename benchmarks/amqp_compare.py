"""The same AMQP client on mqroute's AMQP listener and on RabbitMQ, alternating; and the AMQP
front end beside the native one. Medians of ``--runs``, 256 B, prefetch 100.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/amqp_compare.py --runs 5 \
        --rabbitmq amqp://guest:guest@127.0.0.1:5673/

RabbitMQ is started by hand (benchmarks/compare_rabbitmq.py says how; any port). Workloads:

- pika BlockingConnection, transient, multi-ack every 50 (target: mqroute ≥ 2× RabbitMQ);
- aio-pika, persistent into a durable queue, 1,000 confirms in flight (≥ 3×);
- aio-pika at a fixed 1,000 msg/s: p99 latency (no worse than RabbitMQ's);
- raw_amqp.py's lean client, transient, 1,000 confirms in flight: the brokers' own rates,
  where pika and aio-pika measure their own CPU as much as the broker's.

The AMQP front end against the native one is front_end_cpu.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import compare_rabbitmq as cr
from common import free_port, mqroute_server
from raw_amqp import RawAmqpDriver

from mqroute.bench.runner import BenchOptions, run


def on(url: str) -> None:
    """Point the pika and aio-pika drivers at ``url`` (they read it when they connect)."""
    cr.RABBIT_URL = url
    os.environ["MQROUTE_RABBITMQ_URL"] = url


@contextlib.contextmanager
def mqroute_with_amqp() -> Iterator[tuple[str, str]]:
    """A fresh mqroute server; (native URL, AMQP URL)."""
    port = free_port()
    with mqroute_server("--amqp-port", str(port)) as (_, url):
        yield url, f"amqp://guest:guest@127.0.0.1:{port}/"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rabbitmq", required=True, help="a RabbitMQ's amqp:// URL")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--only", default="", help="run the workloads whose name has this")
    args = parser.parse_args()
    base: dict[str, Any] = {"size": 256, "prefetch": 100, "multi_ack_every": 50}
    transient = BenchOptions(count=args.count, **base)
    persistent = BenchOptions(count=args.count, confirm=1000, persistent=True, **base)
    paced = BenchOptions(time=15, rate=1000, confirm=1000, size=256, prefetch=100)
    cases: list[tuple[str, BenchOptions, Any, Callable[[dict[str, Any]], float], str]] = [
        ("pika, transient, multi-ack 50", transient, cr.PikaDriver, cr.END_TO_END, "msg/s"),
        (
            "aio-pika, persistent, 1,000 confirms",
            persistent,
            cr.AioPikaDriver,
            cr.END_TO_END,
            "msg/s",
        ),
        ("aio-pika at 1,000 msg/s", paced, cr.AioPikaDriver, cr.P99_MS, "p99 ms"),
        (
            "lean client, transient, 1,000 confirms",
            attrs.evolve(transient, confirm=1000),
            RawAmqpDriver,
            cr.END_TO_END,
            "msg/s",
        ),
    ]
    for name, opts, driver, metric, unit in cases:
        if args.only not in name:
            continue
        samples: dict[str, list[float]] = {"mqroute": [], "RabbitMQ": []}
        for i in range(args.runs):
            with mqroute_with_amqp() as (_, amqp_url):
                on(amqp_url)
                samples["mqroute"].append(metric(run(opts, driver)))
            on(args.rabbitmq)
            samples["RabbitMQ"].append(metric(run(opts, driver)))
            print(
                f"  {name} run {i + 1}: mqroute {samples['mqroute'][-1]:10,.1f}  "
                f"RabbitMQ {samples['RabbitMQ'][-1]:10,.1f} {unit}",
                flush=True,
            )
        m, r = statistics.median(samples["mqroute"]), statistics.median(samples["RabbitMQ"])
        ratio = m / r if unit != "p99 ms" else r / m
        print(f"{name}: mqroute {m:,.1f} {unit}, RabbitMQ {r:,.1f} {unit}: {ratio:.2f}x\n")


if __name__ == "__main__":
    main()
