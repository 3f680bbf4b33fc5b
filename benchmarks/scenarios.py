"""mqroute's own benchmark suite, after RabbitMQ's PerfTest scenarios. Run by hand:

    .venv/bin/python benchmarks/scenarios.py --runs 3

Each run starts a fresh ``mqroute server`` (data in a temporary directory) and drives it with
``mqroute.bench.runner.run`` (what ``mqroute bench`` runs). Printed per scenario: medians over
``--runs`` of the publish rate, the end-to-end rate and end-to-end latency p50 / p99.

The durable backlog (publish 1M with no consumer, restart, drain) is benchmarks/backlog.py; the
side-by-side with RabbitMQ is benchmarks/compare_rabbitmq.py.
"""

from __future__ import annotations

import argparse
import statistics

import attrs
from common import mqroute_server

from mqroute.bench.runner import BenchOptions, run

KIB = 1024


def scenarios(count: int) -> dict[str, BenchOptions]:
    fast = BenchOptions(count=count, confirm=1000, multi_ack_every=50, prefetch=100)
    return {
        "one_fast (256 B)": fast,
        "one_fast 12 B": attrs.evolve(fast, size=12),
        "one_fast 5 KiB": attrs.evolve(fast, size=5 * KIB),
        "one_fast persistent": attrs.evolve(fast, persistent=True),
        "one_fast persistent 5 KiB": attrs.evolve(fast, persistent=True, size=5 * KIB),
        "one_fast auto-ack": attrs.evolve(fast, auto_ack=True, multi_ack_every=0),
        "fanout10": attrs.evolve(fast, count=count // 5, queues=10, exchange_type="fanout"),
        "topic 4 producers": attrs.evolve(
            fast, count=count // 4, producers=4, exchange_type="topic", queues=2, spread=True
        ),
        "one_one_one (latency)": BenchOptions(count=count // 20, confirm=1, prefetch=1),
        "many_queues (1,000 × 1/s)": BenchOptions(
            time=20, rate=1000, queues=1000, spread=True, confirm=1000, prefetch=10
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=100_000, help="messages per run")
    parser.add_argument("--only", help="run only scenarios whose name contains this")
    args = parser.parse_args()
    rows = []
    for name, opts in scenarios(args.count).items():
        if args.only and args.only not in name:
            continue
        print(f"{name}: {opts.describe()}", flush=True)
        results = []
        for _ in range(args.runs):
            with mqroute_server() as (_, url):
                results.append(run(attrs.evolve(opts, url=url)))
        rows.append((name, results))

    def med(results: list[dict], pick) -> float:  # type: ignore[type-arg,no-untyped-def]
        return statistics.median(pick(r) for r in results)

    print(f"\nmedians of {args.runs} runs")
    print(f"{'scenario':<28}{'publish/s':>11}{'end-to-end/s':>14}{'p50 ms':>9}{'p99 ms':>9}")
    for name, results in rows:
        print(
            f"{name:<28}{med(results, lambda r: r['publish_rate']):>11,.0f}"
            f"{med(results, lambda r: r['end_to_end_rate']):>14,.0f}"
            f"{med(results, lambda r: r['latency_ms']['p50']):>9.2f}"
            f"{med(results, lambda r: r['latency_ms']['p99']):>9.2f}"
        )


if __name__ == "__main__":
    main()
