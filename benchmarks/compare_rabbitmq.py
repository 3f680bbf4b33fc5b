"""mqroute against RabbitMQ, same workloads, same machine, same run: medians and ratios.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/compare_rabbitmq.py --runs 3

Needs a RabbitMQ on 127.0.0.1:5672 (guest/guest); without one it says so and exits 0. On Debian:

    apt-get install rabbitmq-server
    echo "rabbitmq - nofile 20000" > /etc/security/limits.d/rabbitmq.conf   # else 832 sockets
    ERL_EPMD_ADDRESS=127.0.0.1 RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \\
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \\
      HOME=/var/lib/rabbitmq rabbitmq-server &

Each workload runs through ``mqroute.bench.runner.run`` with a driver per broker and client:
mqroute's SDK, pika's BlockingConnection, aio-pika with pipelined confirms, and (for the transient
workload) the bare relay of benchmarks/relay.py, the ceiling for a broker written this way. Runs
alternate between the contenders; every number printed is a median over ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from common import mqroute_server, relay_server

from mqroute.bench.runner import BenchOptions, MQRouteDriver, RateLimiter, Stats, make_body, run

# MQROUTE_RABBITMQ_URL points elsewhere (tests use a port where nothing listens).
RABBIT_URL = os.environ.get("MQROUTE_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def rabbitmq_reachable() -> bool:
    parts = urllib.parse.urlsplit(RABBIT_URL)
    try:
        socket.create_connection((parts.hostname, parts.port or 5672), timeout=1).close()
        return True
    except OSError:
        return False


# --- RabbitMQ drivers -----------------------------------------------------------------------


def _rabbit_setup(opts: BenchOptions) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    ch = conn.channel()
    exchange = opts.exchange_name
    if exchange and not exchange.startswith("amq."):
        ch.exchange_declare(exchange, opts.exchange_type, durable=opts.persistent)
    for name in opts.queue_names:
        ch.queue_declare(name, durable=opts.persistent)
        ch.queue_purge(name)
        if exchange:
            key = opts.binding_key(name)
            args = {"x-match": "all", "bench": key} if opts.exchange_type == "headers" else None
            ch.queue_bind(name, exchange, key, arguments=args)
    conn.close()


def _rabbit_teardown(opts: BenchOptions) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    ch = conn.channel()
    for name in opts.queue_names:
        ch.queue_delete(name)
    exchange = opts.exchange_name
    if exchange and not exchange.startswith("amq."):
        ch.exchange_delete(exchange)
    conn.close()


class PikaDriver:
    """pika.BlockingConnection: with --confirm every publish waits for its confirm (pika's way)."""

    setup = staticmethod(_rabbit_setup)
    teardown = staticmethod(_rabbit_teardown)

    @staticmethod
    def produce(opts: BenchOptions, stats: Stats) -> None:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
        ch = conn.channel()
        if opts.confirm:
            ch.confirm_delivery()
        body, keys, limiter = make_body(opts.size), opts.routing_keys, RateLimiter(opts.rate)
        props = [
            pika.BasicProperties(
                delivery_mode=2 if opts.persistent else 1,
                headers={"bench": k} if opts.exchange_type == "headers" else None,
            )
            for k in keys
        ]
        n = 0
        while not stats.stop and (opts.count is None or n < opts.count):
            pause = limiter.delay()
            if pause:
                time.sleep(pause)
            i = n % len(keys)
            sent = time.monotonic_ns()
            ch.basic_publish(opts.exchange_name, keys[i], body(), props[i])
            if opts.confirm:
                stats.latency.add(time.monotonic_ns() - sent)
            stats.sent()
            n += 1
            if n % 1000 == 0:
                conn.process_data_events(0)
        conn.close()

    @staticmethod
    def consume(opts: BenchOptions, queues: list[str], stats: Stats) -> None:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
        every = opts.multi_ack_every
        counts: dict[int, int] = {}

        def on_message(channel: Any, method: Any, _props: Any, body: bytes) -> None:
            stats.received(body)
            if opts.auto_ack:
                return
            n = counts[channel.channel_number] = counts.get(channel.channel_number, 0) + 1
            if every <= 1:
                channel.basic_ack(method.delivery_tag)
            elif n % every == 0:
                channel.basic_ack(method.delivery_tag, multiple=True)

        for q in queues:  # a channel per queue: delivery tags are per channel
            ch = conn.channel()
            ch.basic_qos(prefetch_count=opts.prefetch)
            ch.basic_consume(q, on_message, auto_ack=opts.auto_ack)
        stats.ready()
        while not stats.stop:
            conn.process_data_events(time_limit=0.05)
        conn.close()


class AioPikaDriver:
    """aio-pika on asyncio: publishes pipelined up to --confirm unconfirmed, like mqroute's."""

    setup = staticmethod(_rabbit_setup)
    teardown = staticmethod(_rabbit_teardown)

    @staticmethod
    def produce(opts: BenchOptions, stats: Stats) -> None:
        asyncio.run(_aio_produce(opts, stats))

    @staticmethod
    def consume(opts: BenchOptions, queues: list[str], stats: Stats) -> None:
        asyncio.run(_aio_consume(opts, queues, stats))


async def _aio_produce(opts: BenchOptions, stats: Stats) -> None:
    import aio_pika

    conn = await aio_pika.connect(RABBIT_URL)
    ch = await conn.channel(publisher_confirms=True)
    exchange = (
        await ch.get_exchange(opts.exchange_name) if opts.exchange_name else ch.default_exchange
    )
    body, keys, limiter = make_body(opts.size), opts.routing_keys, RateLimiter(opts.rate)
    window = asyncio.Semaphore(opts.window)
    mode = (
        aio_pika.DeliveryMode.PERSISTENT
        if opts.persistent
        else aio_pika.DeliveryMode.NOT_PERSISTENT
    )
    tasks: set[asyncio.Task[None]] = set()

    async def one(key: str) -> None:
        sent = time.monotonic_ns()
        headers = {"bench": key} if opts.exchange_type == "headers" else None
        await exchange.publish(aio_pika.Message(body(), delivery_mode=mode, headers=headers), key)
        stats.latency.add(time.monotonic_ns() - sent)
        window.release()

    n = 0
    while not stats.stop and (opts.count is None or n < opts.count):
        await window.acquire()
        pause = limiter.delay()
        if pause:
            await asyncio.sleep(pause)
        task = asyncio.create_task(one(keys[n % len(keys)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        stats.sent()
        n += 1
    if tasks:
        await asyncio.gather(*tasks)
    await conn.close()


async def _aio_consume(opts: BenchOptions, queues: list[str], stats: Stats) -> None:
    import aio_pika

    conn = await aio_pika.connect(RABBIT_URL)
    every = opts.multi_ack_every

    def handler() -> Callable[[Any], Any]:
        n = 0

        async def on_message(message: Any) -> None:
            nonlocal n
            stats.received(message.body)
            if opts.auto_ack:
                return
            n += 1
            if every <= 1:
                await message.ack()
            elif n % every == 0:
                await message.ack(multiple=True)

        return on_message

    for name in queues:  # a channel per queue: delivery tags are per channel
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=opts.prefetch)
        queue = await ch.get_queue(name)
        await queue.consume(handler(), no_ack=opts.auto_ack)
    stats.ready()
    while not stats.stop:
        await asyncio.sleep(0.05)
    await conn.close()


# --- the workloads ------------------------------------------------------------------------------

Metric = Callable[[dict[str, Any]], float]
END_TO_END: Metric = lambda r: r["end_to_end_rate"]  # noqa: E731
P99_MS: Metric = lambda r: (r["latency_ms"] or {}).get("p99", float("nan"))  # noqa: E731


def workloads(count: int) -> list[dict[str, Any]]:
    """Each workload: options, the RabbitMQ client it is judged against, metric, target."""
    base = {"size": 256, "prefetch": 100}
    return [
        {
            "name": "transient, multi-ack 50",
            "opts": BenchOptions(count=count, multi_ack_every=50, confirm=1000, **base),
            "rabbit": ("pika", PikaDriver, BenchOptions(count=count, multi_ack_every=50, **base)),
            "relay": True,
            "metric": ("msg/s", END_TO_END, "higher"),
            "target": 2.0,
        },
        {
            "name": "persistent, confirms 1000, durable",
            "opts": BenchOptions(
                count=count, multi_ack_every=50, confirm=1000, persistent=True, **base
            ),
            "rabbit": None,  # same options, aio-pika
            "driver": ("aio-pika", AioPikaDriver),
            "metric": ("msg/s", END_TO_END, "higher"),
            "target": 3.0,
        },
        {
            "name": "latency at 1,000 msg/s",
            "opts": BenchOptions(time=15, rate=1000, multi_ack_every=1, confirm=1000, **base),
            "driver": ("aio-pika", AioPikaDriver),
            "metric": ("p99 ms", P99_MS, "lower"),
            "target": 1.0,
        },
        {
            "name": "fanout to 10 queues",
            "opts": BenchOptions(
                count=count // 5,
                multi_ack_every=50,
                confirm=1000,
                queues=10,
                exchange_type="fanout",
                **base,
            ),
            "rabbit": (
                "pika",
                PikaDriver,
                BenchOptions(
                    count=count // 5, multi_ack_every=50, queues=10, exchange_type="fanout", **base
                ),
            ),
            "metric": ("deliveries/s", END_TO_END, "higher"),
            "target": 2.0,
        },
    ]


def measure(workload: dict[str, Any], runs: int) -> dict[str, Any]:
    unit, metric, better = workload["metric"]
    if workload.get("rabbit"):
        client, driver, rabbit_opts = workload["rabbit"]
    else:
        client, driver = workload["driver"]
        rabbit_opts = workload["opts"]
    samples: dict[str, list[float]] = {"mqroute": [], f"RabbitMQ {client}": []}
    if workload.get("relay"):
        samples["relay"] = []
    for i in range(runs):
        for who in samples:
            if who == "mqroute":
                with mqroute_server() as (_, url):
                    result = run(_with_url(workload["opts"], url), MQRouteDriver)
            elif who == "relay":
                with relay_server() as (_, url):
                    result = run(_with_url(workload["opts"], url), MQRouteDriver)
            else:
                result = run(rabbit_opts, driver)
            value = metric(result)
            samples[who].append(value)
            lost = result["expected"] - result["consumed"]
            note = f"  (missing {lost:,})" if lost > 0 else ""
            print(f"  run {i + 1} {who:<18} {value:12,.2f} {unit}{note}", flush=True)
    medians = {who: statistics.median(v) for who, v in samples.items()}
    rabbit = medians[f"RabbitMQ {client}"]
    ratio = medians["mqroute"] / rabbit if better == "higher" else rabbit / medians["mqroute"]
    return {
        "name": workload["name"],
        "unit": unit,
        "medians": medians,
        "samples": samples,
        "ratio": ratio,
        "target": workload["target"],
        "client": client,
    }


def _with_url(opts: BenchOptions, url: str) -> BenchOptions:
    import attrs

    return attrs.evolve(opts, url=url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=100_000, help="messages per run")
    parser.add_argument("--only", help="run only workloads whose name contains this")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if not rabbitmq_reachable():
        print(
            f"SKIPPED: no RabbitMQ at {RABBIT_URL}. Install and start one (see this script's "
            "docstring) to compare; nothing was measured."
        )
        return
    results = []
    for workload in workloads(args.count):
        if args.only and args.only not in workload["name"]:
            continue
        print(f"\n{workload['name']}: {workload['opts'].describe()}", flush=True)
        results.append(measure(workload, args.runs))
    print(f"\nmedians of {args.runs} runs")
    print(f"{'workload':<36}{'mqroute':>12}{'RabbitMQ':>12}  client    ratio  target")
    for r in results:
        rabbit = r["medians"][f"RabbitMQ {r['client']}"]
        mark = "ok" if r["ratio"] >= r["target"] else "MISSED"
        print(
            f"{r['name']:<36}{r['medians']['mqroute']:>12,.1f}{rabbit:>12,.1f}  "
            f"{r['client']:<9}{r['ratio']:>5.2f}x  ≥{r['target']:.1f}x {mark}"
        )
        if "relay" in r["medians"]:
            frac = r["medians"]["mqroute"] / r["medians"]["relay"]
            print(
                f"{'  bare relay (ceiling)':<36}{r['medians']['relay']:>12,.1f}"
                f"{'':>12}  mqroute = {frac:.2f} of the ceiling"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
