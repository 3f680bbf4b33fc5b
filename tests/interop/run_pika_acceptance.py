"""Run pika's own acceptance tests against mqroute's AMQP listener, and print the table.

    .venv/bin/pip install -e '.[interop]'
    git clone --branch 1.4.4 https://github.com/pika/pika /tmp/pika
    .venv/bin/python tests/interop/run_pika_acceptance.py /tmp/pika

pika's tests connect to 127.0.0.1:5672 (and localhost:5672) as guest/guest, so port 5672 must
be free: this starts ``mqroute server --amqp-port 5672`` (native port ephemeral, data in a
temporary directory), runs ``tests/acceptance/blocking_adapter_test.py`` and
``tests/acceptance/async_adapter_tests.py`` from the checkout with its own pika, and stops the
server. Use the tag of the pika you installed; docs/amqp.md has the last results.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITES = ["tests/acceptance/blocking_adapter_test.py", "tests/acceptance/async_adapter_tests.py"]


def wait_for(port: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pika_checkout", type=Path)
    args = parser.parse_args()
    checkout = args.pika_checkout.resolve()
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 5672)) == 0:
            raise SystemExit("port 5672 is in use (a RabbitMQ?): stop it first")
    with tempfile.TemporaryDirectory(prefix="mqroute-pika-") as data:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "mqroute", "server", "--port", "0"),
                *("--amqp-port", "5672", "--data-dir", data, "--log-level", "warning"),
            ]
        )
        try:
            wait_for(5672)
            rows = []
            for suite in SUITES:
                result = subprocess.run(
                    [
                        *(sys.executable, "-m", "pytest", suite, "-q", "-p", "no:cacheprovider"),
                        *("-p", "no:mqroute", "-o", "addopts=", "-rfE"),
                    ],
                    cwd=checkout,
                    capture_output=True,
                    text=True,
                    timeout=1800,
                )
                lines = result.stdout.strip().splitlines()
                summary = lines[-1] if lines else result.stderr.strip()[-200:]
                failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
                rows.append((suite, summary, failures))
        finally:
            server.terminate()
            server.wait(30)
    print(f"pika checkout {checkout}\n")
    print("| suite | result |\n|---|---|")
    for suite, summary, _ in rows:
        print(f"| {suite} | {re.sub(r' in [0-9.]+s.*', '', summary.strip('= '))} |")
    for suite, _, failures in rows:
        for line in failures:
            print(f"{suite}: {line}")


if __name__ == "__main__":
    main()
