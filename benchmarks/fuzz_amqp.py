"""A long, bounded fuzz run of the AMQP port without a socket: random well-framed frames and
random bytes after a good login, fed to the framing and the front end on one shared core
vhost (tests/amqp_fuzz.py). Any exception but the protocol's own is a bug, printed with the
seed that makes it again.

    .venv/bin/python benchmarks/fuzz_amqp.py --inputs 200000

An input is one frame (or, one connection in ten, a run of random bytes).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.amqp_fuzz import drive, login_frames, random_frames

from mqroute.core.vhost import Vhost

FRAMES_PER_CONNECTION = 50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    login = b"".join(login_frames())
    vhost = Vhost()
    done = connections = failures = 0
    started = time.monotonic()
    now = 1_700_000_000.0
    while done < args.inputs:
        seed = args.seed * 1_000_003 + connections
        rng = random.Random(seed)
        if rng.random() < 0.1:
            data = rng.randbytes(rng.randrange(1, 2000))
            count = 1
        else:
            data = random_frames(rng, FRAMES_PER_CONNECTION)
            count = FRAMES_PER_CONNECTION
        now += 0.5
        try:
            drive(login + data, vhost=vhost, now=now)
        except Exception:
            failures += 1
            print(f"FAILURE with connection seed {seed}:", file=sys.stderr)
            traceback.print_exc()
            if failures >= 5:
                break
        if connections % 500 == 0:
            vhost.expire(now=now)  # timers of what the connections left behind
        done += count
        connections += 1
        if connections % 1000 == 0:
            print(f"  {done:,} inputs, {connections:,} connections, {failures} failures")
    elapsed = time.monotonic() - started
    print(
        f"{done:,} inputs in {connections:,} connections, {elapsed:.0f}s "
        f"({done / elapsed:,.0f}/s); failures: {failures}; queues left {len(vhost.queues)}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
