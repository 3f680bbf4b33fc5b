"""Flow control against a baseline: end-to-end rate, latency and queue depth, A/B.

    .venv/bin/python benchmarks/flow_control.py --baseline-src /path/to/old/src --runs 5

Runs ``mqroute bench -C COUNT -A 50 -c 1000`` (transient, 1 producer, 1 consumer) against a
server from ``--baseline-src`` (another checkout's ``src``), and from this tree with its
default settings and with each of ``--limits`` as ``--queue-flow-limit``, in turn, each with
its own client code (the wire protocols may differ). While a run goes, a sampler reads the
queue's depth every 50 ms. Printed: medians of the end-to-end rate, p99 end-to-end latency and
the deepest queue seen, and each rate as a ratio of the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import free_port, wait_for_port

HERE = Path(__file__).resolve().parent
SAMPLER = """
import sys, time, trio, mqroute
async def main(url, seconds):
    deepest = 0
    async with mqroute.connect(url) as conn:
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            for row in await conn.inspect("queues"):
                if row["name"] == "bench":
                    if row["ready"] > deepest:
                        deepest = row["ready"]
                        print(deepest, flush=True)
            await trio.sleep(0.05)
trio.run(main, sys.argv[1], float(sys.argv[2]))
"""


def run_once(src: Path, extra: list[str], count: int, timeout: float) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    port = free_port()
    url = f"mqroute://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="mqroute-flow-") as data:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "mqroute", "server", "--port", str(port)),
                *("--data-dir", data, "--log-level", "warning", *extra),
            ],
            env=env,
        )
        try:
            wait_for_port(port)
            sampler = subprocess.Popen(
                [sys.executable, "-c", SAMPLER, url, str(timeout)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            bench = subprocess.run(
                [
                    *(sys.executable, "-m", "mqroute", "bench", "--url", url, "--json"),
                    *("--quiet", "-C", str(count), "-A", "50", "-c", "1000"),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
            )
            sampler.terminate()
            out, _ = sampler.communicate(timeout=30)
        finally:
            server.terminate()
            server.wait(30)
    result = json.loads(bench.stdout)
    return {
        "rate": result["end_to_end_rate"],
        "p99_ms": result["latency_ms"]["p99"],
        "deepest": float(out.split()[-1]) if out.split() else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-src", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=300_000)
    parser.add_argument(
        "--limits",
        default="256KiB",
        help="queue flow limits to try beside the default, comma-separated (256KiB,128KiB)",
    )
    args = parser.parse_args()
    this = (HERE.parent / "src").resolve()
    trees: dict[str, tuple[Path, list[str]]] = {
        "baseline": (args.baseline_src.resolve(), []),
        "this": (this, []),
    }
    for limit in filter(None, args.limits.split(",")):
        trees[f"this-{limit}"] = (this, ["--queue-flow-limit", limit])
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for i in range(args.runs):
        for name, (src, extra) in trees.items():
            started = time.monotonic()
            r = run_once(src, extra, args.count, timeout=600)
            results[name].append(r)
            print(
                f"run {i + 1} {name:14}: {r['rate']:9,.0f} msg/s  p99 {r['p99_ms']:8.1f} ms  "
                f"deepest queue {r['deepest']:9,.0f}  ({time.monotonic() - started:.0f}s)",
                flush=True,
            )
    print()
    medians = {
        name: {k: statistics.median(r[k] for r in runs) for k in ("rate", "p99_ms", "deepest")}
        for name, runs in results.items()
    }
    for name, m in medians.items():
        print(
            f"median {name:14}: {m['rate']:9,.0f} msg/s  p99 {m['p99_ms']:8.1f} ms  "
            f"deepest queue {m['deepest']:9,.0f}"
        )
    for name in trees:
        ratio = medians[name]["rate"] / medians["baseline"]["rate"]
        print(f"end-to-end rate, {name} / baseline: {ratio:.2f}x")


if __name__ == "__main__":
    main()
