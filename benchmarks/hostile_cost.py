"""What hostile AMQP input costs the broker, and whether it gives memory back: this tree against
another (``--baseline-src``), each on a fresh server. Loopback only, bounded.

    .venv/bin/python benchmarks/hostile_cost.py --baseline-src /path/to/old/src

Scenarios, each on a fresh server:

- ``wide tables``: 300 publishes whose content header holds a field table of 8,190 tiny
  entries, at the limit of values a frame may hold (7.4 MB sent, as the issue's 60 frames of
  128 KiB). Printed: the server's CPU seconds for them, and another client's slowest round
  trip meanwhile (one declare every 20 ms).
- ``uncommitted``: tx.select, then 2,000 publishes of 64 KiB never committed, then a rollback.
  Printed: RSS growth at the peak and after.
- ``channels``: 40 connections × 2,047 channels opened, then all closed. Printed: RSS growth
  with them open and after they closed.

A server that dies in a scenario says so; a scenario whose client is refused (a limit) is
the point, not an error.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from common import free_port, rss_mb, wait_for_port
from pamqp import commands as amqp
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from pamqp.body import ContentBody

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.amqp_raw import RawAmqp

from mqroute.server import ServerAddress

AMQP_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, AssertionError)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(src: Path | None) -> tuple[subprocess.Popen[bytes], ServerAddress, str]:
    port, amqp_port = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="mqroute-cost-")
    env = {**os.environ, **({"PYTHONPATH": str(src)} if src else {})}
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "mqroute", "server", "--port", str(port)),
            *("--amqp-port", str(amqp_port), "--data-dir", data, "--log-level", "error"),
        ],
        env=env,
    )
    wait_for_port(port)
    wait_for_port(amqp_port)
    return server, ServerAddress("127.0.0.1", port, amqp_port), data


def wide_header_frame() -> bytes:
    """A content header whose headers table holds 8,190 tiny (void) entries."""
    entries = b"\x01kV" * 8190
    table = struct.pack(">I", len(entries)) + entries
    payload = struct.pack(">HHQH", 60, 0, 1, 0x2000) + table
    return struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce"


async def probe(address: ServerAddress, stop: trio.Event, worst: list[float]) -> None:
    raw = await RawAmqp.connect(address)
    await raw.open_channel()
    while not stop.is_set():
        started = time.monotonic()
        await raw.send(1, amqp.Queue.Declare(queue="probe"))
        await raw.method()
        worst[0] = max(worst[0], time.monotonic() - started)
        await trio.sleep(0.02)


async def wide_tables(address: ServerAddress, pid: int) -> str:
    worst = [0.0]
    stop = trio.Event()
    before = cpu_seconds(pid)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe, address, stop, worst)
        raw = await RawAmqp.connect(address)
        await raw.open_channel()
        publish = amqp_frame.marshal(amqp.Basic.Publish(routing_key="nowhere"), 1)
        body = amqp_frame.marshal(ContentBody(b"x"), 1)
        frame = publish + wide_header_frame() + body
        try:
            with trio.fail_after(120):
                for _ in range(300):
                    await raw.send_raw(frame)
                await raw.send(1, amqp.Basic.Qos(prefetch_count=1))  # a round trip behind
                while True:
                    method = await raw.method()
                    if method is None or isinstance(method, amqp.Basic.QosOk):
                        break
        except (*AMQP_ERRORS, trio.TooSlowError):
            pass  # closed by the broker (a limit): what it cost is still measured
        stop.set()
    cpu = cpu_seconds(pid) - before
    return f"CPU {cpu:.2f} s; another client's worst round trip {worst[0] * 1000:.0f} ms"


async def uncommitted(address: ServerAddress, pid: int) -> str:
    start_rss = rss_mb(pid)[0]
    peak = start_rss
    raw = await RawAmqp.connect(address)
    await raw.open_channel()
    await raw.send(1, amqp.Tx.Select())
    body = b"u" * 64 * 1024
    one = b"".join(
        amqp_frame.marshal(m, 1)
        for m in (
            amqp.Basic.Publish(routing_key="tx"),
            amqp_header.ContentHeader(0, len(body), amqp.Basic.Properties()),
            ContentBody(body),
        )
    )
    try:
        for i in range(2000):
            await raw.send_raw(one)
            if i % 100 == 0:
                peak = max(peak, rss_mb(pid)[0])
        await raw.send(1, amqp.Tx.Rollback())
        with trio.move_on_after(5):
            while not isinstance(await raw.method(), amqp.Tx.RollbackOk):
                pass
    except AMQP_ERRORS:
        pass
    peak = max(peak, rss_mb(pid)[0])
    await trio.sleep(1)
    return f"RSS +{peak - start_rss:.0f} MB at the peak, +{rss_mb(pid)[0] - start_rss:.0f} MB after"


async def channels(address: ServerAddress, pid: int) -> str:
    start_rss = rss_mb(pid)[0]
    clients = []
    for _ in range(40):
        raw = await RawAmqp.connect(address)
        await raw.send_raw(
            b"".join(amqp_frame.marshal(amqp.Channel.Open(), n) for n in range(1, 2048))
        )
        for _ in range(2047):
            if not isinstance(await raw.method(), amqp.Channel.OpenOk):
                break
        clients.append(raw)
    open_rss = rss_mb(pid)[0]
    for raw in clients:
        await raw.stream.aclose()
    await trio.sleep(2)
    return f"RSS +{open_rss - start_rss:.0f} MB open, +{rss_mb(pid)[0] - start_rss:.0f} MB closed"


SCENARIOS = {"wide tables": wide_tables, "uncommitted": uncommitted, "channels": channels}


async def main(baseline: Path | None) -> None:
    trees = [("this tree", None)] + ([("baseline", baseline)] if baseline else [])
    for name, scenario in SCENARIOS.items():
        for tree, src in trees:
            server, address, _ = start(src)
            try:
                result = await scenario(address, server.pid)
            finally:
                alive = server.poll() is None
                server.terminate()
                server.wait(30)
            print(f"{name:12} {tree:10} {result}{'' if alive else '  (the server DIED)'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-src", type=Path)
    trio.run(main, parser.parse_args().baseline_src)
