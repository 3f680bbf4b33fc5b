"""The benchmark scripts run by hand still work: the relay carries a bench run, and the RabbitMQ
comparison skips clearly when there is no RabbitMQ."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import attrs
import trio

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


async def test_compare_rabbitmq_skips_without_a_rabbitmq() -> None:
    result = await trio.run_process(
        [sys.executable, str(BENCHMARKS / "compare_rabbitmq.py"), "--runs", "1"],
        capture_stdout=True,
        cwd=BENCHMARKS,
        env={**os.environ, "MQROUTE_RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1/%2F"},
    )
    assert result.stdout.startswith(b"SKIPPED: no RabbitMQ at amqp://guest:guest@127.0.0.1:1/")


def test_the_relay_carries_a_bench_run() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from common import relay_server

        from mqroute.bench.runner import BenchOptions, run

        with relay_server() as (_, url):
            result = run(attrs.evolve(BenchOptions(count=2000, multi_ack_every=50), url=url))
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert result["published"] == result["consumed"] == 2000
