"""What users, permissions and TLS cost, against the code from before them, alternating runs.

    .venv/bin/python benchmarks/security_cost.py --baseline-src /path/to/old/src --runs 5

Three measurements, each a median of ``--runs``:

- ``mqroute bench -C 100000 -A 50`` (transient, multi-ack every 50) on the old tree as guest,
  this tree as guest (every permission: checks short-circuit), and this tree as a user with
  narrow regular expressions (each check a cached lookup);
- the same workload over TLS (mqroutes://, a certificate from trustme) beside plain TCP;
- the time to connect (TCP, handshake and login, until the first request can go), on the old
  tree and on this one for a user whose password hash is real scrypt: the first login pays
  the hash, later ones hit the login cache.
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
THIS = (HERE.parent / "src").resolve()
WORKLOAD = ["-C", "100000", "-A", "50"]
NARROW = ("^bench", "^(amq\\.default|bench)", "^bench")

DEFINE = """
import sys
from pathlib import Path
from mqroute.server import users
from mqroute.core.access import Permissions
d = users.Definitions.default()
d.add_user("narrow", "narrow-pw")
d.set_permissions("narrow", "/", Permissions(*sys.argv[2:5]))
users.save(Path(sys.argv[1]), d)
"""

CONNECT = """
import sys, time, statistics, trio, mqroute
async def main(url, n):
    times = []
    for _ in range(n):
        started = time.perf_counter()
        async with mqroute.connect(url) as conn:
            times.append(time.perf_counter() - started)
    print(times[0] * 1000, statistics.median(times[1:]) * 1000)
trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def server(src: Path, data: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "mqroute", "server", "--port", str(port)]
    command += ["--data-dir", data, "--log-level", "warning", *extra]
    return subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(src)})


def bench(src: Path, url: str, env: dict[str, str] | None = None) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "mqroute", "bench", "--json", "--quiet", "--url", url, *WORKLOAD],
        env={**os.environ, "PYTHONPATH": str(src), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return float(json.loads(out.stdout)["end_to_end_rate"])


def run(src: Path, *, user: bool = False, tls: Path | None = None) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mqroute-sec-") as data:
        extra: list[str] = []
        if user:
            subprocess.run(
                [sys.executable, "-c", DEFINE, data, *NARROW],
                env={**os.environ, "PYTHONPATH": str(src)},
                check=True,
            )
        if tls is not None:
            extra = ["--tls-cert", str(tls / "server.pem"), "--tls-key", str(tls / "server.pem")]
        proc = server(src, data, port, *extra)
        try:
            wait_for_port(port)
            login = "narrow:narrow-pw@" if user else ""
            if tls is not None:
                env = {"SSL_CERT_FILE": str(tls / "ca.pem")}
                return bench(src, f"mqroutes://{login}127.0.0.1:{port}", env)
            return bench(src, f"mqroute://{login}127.0.0.1:{port}")
        finally:
            proc.terminate()
            proc.wait(30)


def connect_times(src: Path, *, user: bool) -> tuple[float, float]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mqroute-sec-") as data:
        if user:
            subprocess.run(
                [sys.executable, "-c", DEFINE, data, ".*", ".*", ".*"],
                env={**os.environ, "PYTHONPATH": str(src)},
                check=True,
            )
        proc = server(src, data, port)
        try:
            wait_for_port(port)
            time.sleep(0.2)
            url = f"mqroute://{'narrow:narrow-pw@' if user else ''}127.0.0.1:{port}"
            out = subprocess.run(
                [sys.executable, "-c", CONNECT, url, "51"],
                env={**os.environ, "PYTHONPATH": str(src)},
                capture_output=True,
                text=True,
                check=True,
            )
            first, median = out.stdout.split()
            return float(first), float(median)
        finally:
            proc.terminate()
            proc.wait(30)


def certificates(where: Path) -> Path:
    import trustme

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(where / "server.pem")
    )
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    return where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-src", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    old = args.baseline_src.resolve()
    rates: dict[str, list[float]] = {k: [] for k in ("before", "guest", "narrow", "tls")}
    with tempfile.TemporaryDirectory() as certs:
        tls = certificates(Path(certs))
        for i in range(args.runs):
            for name, value in (
                ("before", lambda: run(old)),
                ("guest", lambda: run(THIS)),
                ("narrow", lambda: run(THIS, user=True)),
                ("tls", lambda: run(THIS, tls=tls)),
            ):
                rates[name].append(value())
                print(f"run {i + 1} {name:7}: {rates[name][-1]:10,.0f} msg/s", flush=True)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    print()
    for name, value in medians.items():
        print(f"median {name:7}: {value:10,.0f} msg/s  ({value / medians['before']:.3f}x before)")
    print(f"TLS / plain TCP (this tree, guest): {medians['tls'] / medians['guest']:.3f}x")
    print()
    before = [connect_times(old, user=False) for _ in range(3)]
    guest = [connect_times(THIS, user=False) for _ in range(3)]
    scrypt = [connect_times(THIS, user=True) for _ in range(3)]
    for name, got in (("before", before), ("guest", guest), ("user (scrypt)", scrypt)):
        first = statistics.median(t[0] for t in got)
        later = statistics.median(t[1] for t in got)
        print(f"connect {name:13}: first {first:6.2f} ms, then a median of {later:5.2f} ms")


if __name__ == "__main__":
    main()
