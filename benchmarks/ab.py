"""A/B against another checkout: ``mqroute bench`` on a server from each tree, alternating.

    .venv/bin/python benchmarks/ab.py --baseline-src /path/to/old/src --runs 5

Two workloads, as the architecture issue asks: transient ``-C 100000 -A 50`` and persistent
``-C 100000 -c 1000 --persistent``. Each run starts a fresh server (data in a temporary
directory) from one tree and drives it with that tree's own ``mqroute bench``; the trees take
turns, so a noisy neighbour hurts both. Printed: each run, then the medians of the publish and
end-to-end rates and the p99 latency, and this tree's end-to-end rate as a ratio of the
baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import free_port, wait_for_port

HERE = Path(__file__).resolve().parent
WORKLOADS = {
    "transient -C 100000 -A 50": ["-C", "100000", "-A", "50"],
    "persistent -C 100000 -c 1000": ["-C", "100000", "-c", "1000", "--persistent"],
}


def run_once(src: Path, bench_args: list[str], timeout: float) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mqroute-ab-") as data:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "mqroute", "server", "--port", str(port)),
                *("--data-dir", data, "--log-level", "warning"),
            ],
            env=env,
        )
        try:
            wait_for_port(port)
            bench = subprocess.run(
                [
                    *(sys.executable, "-m", "mqroute", "bench", "--json", "--quiet"),
                    *("--url", f"mqroute://127.0.0.1:{port}", *bench_args),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
            )
        finally:
            server.terminate()
            server.wait(30)
    result = json.loads(bench.stdout)
    return {
        "publish": result["publish_rate"],
        "end_to_end": result["end_to_end_rate"],
        "p99_ms": result["latency_ms"]["p99"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-src", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    trees = {"baseline": args.baseline_src.resolve(), "this": (HERE.parent / "src").resolve()}
    for workload, bench_args in WORKLOADS.items():
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for i in range(args.runs):
            for name, src in trees.items():
                r = run_once(src, bench_args, timeout=600)
                results[name].append(r)
                print(
                    f"{workload} run {i + 1} {name:8}: publish {r['publish']:9,.0f}/s  "
                    f"end-to-end {r['end_to_end']:9,.0f}/s  p99 {r['p99_ms']:7.1f} ms",
                    flush=True,
                )
        medians = {
            name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            for name, runs in results.items()
        }
        for name, m in medians.items():
            print(
                f"{workload} median {name:8}: publish {m['publish']:9,.0f}/s  "
                f"end-to-end {m['end_to_end']:9,.0f}/s  p99 {m['p99_ms']:7.1f} ms"
            )
        ratio = medians["this"]["end_to_end"] / medians["baseline"]["end_to_end"]
        print(f"{workload}: this / baseline end-to-end = {ratio:.2f}x\n", flush=True)


if __name__ == "__main__":
    main()
