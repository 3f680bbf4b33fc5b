"""Helpers the benchmark scripts share: ports, RSS, and starting an mqroute server process."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB, from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)


def server_command(port: int, data_dir: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mqroute",
        "server",
        "--port",
        str(port),
        "--data-dir",
        data_dir,
        "--amqp-port",  # ephemeral: 5672 may be a RabbitMQ's (compare_rabbitmq.py runs one)
        "0",
        *extra,
    ]


def start_server(data_dir: str, port: int, *extra: str) -> tuple[subprocess.Popen[bytes], float]:
    """Start ``mqroute server``; return it and the seconds until it logged "listening on"."""
    started = time.monotonic()
    server = subprocess.Popen(server_command(port, data_dir, *extra), stderr=subprocess.PIPE)
    assert server.stderr is not None
    for line in server.stderr:
        text = line.decode()
        if "recovered" in text:
            print("   ", text.strip().split(": ", 1)[-1])
        if re.search("listening on", text):
            return server, time.monotonic() - started
    raise SystemExit("server did not start")


@contextmanager
def mqroute_server(*extra: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A fresh server with its own data directory, stopped on exit; yields (process, url)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mqroute-bench-") as data_dir:
        data = os.path.join(data_dir, "data")
        server = subprocess.Popen(server_command(port, data, "--log-level", "warning", *extra))
        wait_for_port(port)
        try:
            yield server, f"mqroute://127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(30)


@contextmanager
def relay_server() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """The bare relay of benchmarks/relay.py, stopped on exit; yields (process, url)."""
    port = free_port()
    here = os.path.dirname(os.path.abspath(__file__))
    server = subprocess.Popen([sys.executable, os.path.join(here, "relay.py"), str(port)])
    try:
        wait_for_port(port)
        yield server, f"mqroute://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)
