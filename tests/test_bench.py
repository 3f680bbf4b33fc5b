"""`mqroute bench`: its statistics, its option checks, and real runs against a real server."""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import mqroute
from mqroute.bench.runner import BenchOptions, Histogram
from mqroute.errors import BenchError

from .helpers import start_server_process


@given(st.lists(st.integers(1, 10**11), min_size=1, max_size=300))
def test_histogram_percentiles_are_within_one_percent(samples: list[int]) -> None:
    h = Histogram()
    for s in samples:
        h.add(s)
    ordered = sorted(samples)
    for p in (50, 75, 95, 99):
        exact = ordered[max(math.ceil(len(ordered) * p / 100) - 1, 0)]
        assert abs(h.percentile(p) - exact) <= 0.011 * exact
    assert h.min == ordered[0] and h.max == ordered[-1]


def test_histograms_merge_across_the_wire() -> None:
    a, b = Histogram(), Histogram()
    for i in range(1, 101):
        (a if i % 2 else b).add(i * 1000)
    merged = Histogram.from_wire(a.to_wire())
    merged.merge(Histogram.from_wire(b.to_wire()))
    assert merged.n == 100 and merged.min == 1000 and merged.max == 100_000
    assert abs(merged.percentile(50) - 50_000) < 1000


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (BenchOptions(), "give --count"),
        (BenchOptions(count=1, producers=0, consumers=0), "both 0"),
        (BenchOptions(count=1, prefetch=10, multi_ack_every=50), "exceeds --prefetch 10"),
        (BenchOptions(count=1, producers=0), "with --producers 0"),
        (BenchOptions(count=1, exchange_type="x"), "unknown --exchange-type"),
    ],
)
def test_options_that_cannot_work_are_refused_by_name(opts: BenchOptions, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        opts.check()


def test_fanout_and_spread_routing() -> None:
    fan = BenchOptions(count=1, queues=3, exchange_type="fanout")
    assert fan.exchange_name == "bench" and fan.copies == 3 and fan.routing_keys == ["bench"]
    spread = BenchOptions(count=1, queues=3, spread=True)
    assert spread.copies == 1 and spread.routing_keys == ["bench-1", "bench-2", "bench-3"]
    one = BenchOptions(count=1)
    assert one.exchange_name == "" and one.routing_keys == ["bench"]
    two_consumers = BenchOptions(count=1, queues=4, consumers=2)
    assert two_consumers.queues_for(0) == ["bench-1", "bench-3"]


async def run_bench(url: str, *args: str) -> dict[str, object]:
    result = await trio.run_process(
        [sys.executable, "-m", "mqroute", "bench", "--url", url, "--json", *args],
        capture_stdout=True,
        capture_stderr=True,
    )
    assert b"published" not in result.stderr
    out: dict[str, object] = json.loads(result.stdout)
    return out


async def test_bench_measures_a_real_server(tmp_path: Path) -> None:
    process, url, _ = await start_server_process(tmp_path / "data")
    try:
        result = await run_bench(url, "-C", "3000", "-A", "50", "-c", "100", "--persistent")
        assert result["published"] == result["consumed"] == 3000
        for key in ("publish_rate", "consume_rate", "end_to_end_rate"):
            assert isinstance(result[key], float) and result[key] > 0
        for key in ("confirm_latency_ms", "latency_ms"):
            row = result[key]
            assert isinstance(row, dict)
            assert 0 < row["min"] <= row["p50"] <= row["p75"] <= row["p99"] <= row["max"]
        fanout = await run_bench(url, "-C", "500", "--queues", "3", "-t", "fanout", "-y", "2")
        assert fanout["consumed"] == 1500
        async with mqroute.connect(url) as conn:
            assert await conn.inspect("queues") == []  # bench cleans up after itself
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()


async def test_bench_without_a_broker_says_where_it_looked() -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "mqroute", "bench", "-C", "1", "--url", "mqroute://127.0.0.1:1"],
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 1
    assert b"cannot reach a broker at mqroute://127.0.0.1:1" in result.stderr
