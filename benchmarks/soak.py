"""Hostile-client soak: a well-behaved client's latency, the server's memory and the backlog's
safety while many clients misbehave at once, on both ports. Bounded in time and count;
loopback only.

    .venv/bin/python benchmarks/soak.py --minutes 10

It starts ``mqroute server`` (data in a temporary directory, a 256 MiB memory watermark), fills
a durable queue with a persistent, confirmed backlog, then for the given time runs at once:

- fuzz: frames of random or mutated bytes, before and after the handshake;
- slowloris: frames begun and trickled a byte every few seconds;
- oversized partial frames: a huge length prefix, a little data, then gone;
- consumers that never read their socket, on a queue that gets messages;
- connection churn: open, handshake, close, as fast as it goes;
- a transient publish flood into a queue nobody consumes (the memory alarm's business);
- poison values: x-death, x-delay and expiration of every wrong shape, through TTL and nacks
  into dead-letter queues;

and on the AMQP port at once:

- pika workers (real processes) consuming with deliveries in flight, killed with SIGKILL;
- TCP resets (SO_LINGER 0) in the handshake, while consuming, and inside a transaction;
- start-ok and publishes with field tables nested past the limit, and wide ones (a frame of
  tiny entries);
- get loops and mandatory-return floods from clients that never read their socket;
- random frames after a good login, and frames trickled a byte at a time;

and, beside them, one well-behaved SDK client and one well-behaved pika client that declare,
publish (confirmed), consume and ack in a loop, each in a process of its own, timing each
step. At the end: p99 of each step, the server's peak RSS against the watermark, whether
the server ever exited, and whether the backlog and every confirmed message of the
well-behaved clients are intact.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cbor2
import pika
import trio
from common import free_port, rss_mb, server_command, wait_for_port
from pamqp import commands as amqp
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from pamqp.body import ContentBody

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.amqp_fuzz import login_frames, random_frames
from tests.amqp_raw import PIKA_WORKER, RawAmqp, start_ok_bytes, table_bytes

import mqroute
from mqroute.protocol import PROTOCOL_VERSION, Connection, Hello, Role
from mqroute.server import ServerAddress

WATERMARK = 256 * 1024 * 1024
BACKLOG = 20_000


def frame(items: Any) -> bytes:
    payload = cbor2.dumps(items)
    return struct.pack(">I", len(payload)) + payload


def hello() -> bytes:
    return Connection(Role.CLIENT).send(
        Hello(versions=[PROTOCOL_VERSION], client="soak-hostile", heartbeat_ms=0)
    )


AMQP_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, AssertionError)


def content(exchange: str, key: str, body: bytes, mandatory: bool = False) -> bytes:
    return b"".join(
        amqp_frame.marshal(m, 1)
        for m in (
            amqp.Basic.Publish(exchange=exchange, routing_key=key, mandatory=mandatory),
            amqp_header.ContentHeader(0, len(body), amqp.Basic.Properties()),
            ContentBody(body),
        )
    )


class Soak:
    def __init__(self, host: str, port: int, amqp_port: int, deadline: float) -> None:
        self.host, self.port, self.deadline = host, port, deadline
        self.url = f"mqroute://{host}:{port}"
        self.address = ServerAddress(host, port, amqp_port)
        self.counts: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = {
            k: []
            for k in (
                "declare",
                "publish",
                "consume",
                "ack",
                "pika declare",
                "pika publish",
                "pika get",
            )
        }
        self.confirmed: set[str] = set()
        self.received: set[str] = set()
        self.rng = random.Random(7)

    def running(self) -> bool:
        return trio.current_time() < self.deadline

    async def open(self, handshake: bool = True) -> trio.SocketStream | None:
        try:
            stream = await trio.open_tcp_stream(self.host, self.port)
            if handshake:
                await stream.send_all(hello())
            return stream
        except OSError:
            self.counts["refused"] += 1
            return None

    async def fuzz(self) -> None:
        while self.running():
            stream = await self.open(handshake=self.rng.random() < 0.7)
            if stream is None:
                await trio.sleep(0.1)
                continue
            with trio.move_on_after(2):
                try:
                    kind = self.rng.random()
                    if kind < 0.4:
                        data = self.rng.randbytes(self.rng.randrange(1, 300))
                    else:
                        items = [self.rng.choice([40, 42, 43, 12, 15, 17, 22, 99])]
                        items += [
                            self.rng.choice(["", "q", b"x", 1, -1, True, {}, [1], None])
                            for _ in range(self.rng.randrange(0, 8))
                        ]
                        data = frame(items)
                    await stream.send_all(data)
                    while await stream.receive_some(4096):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            await trio.aclose_forcefully(stream)
            self.counts["fuzz"] += 1

    async def slowloris(self) -> None:
        while self.running():
            stream = await self.open()
            if stream is None:
                await trio.sleep(0.5)
                continue
            try:
                await stream.send_all(struct.pack(">I", 100_000) + b"\x86")
                while self.running():
                    await trio.sleep(3)
                    await stream.send_all(b"\x00")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                self.counts["slowloris closed by server"] += 1
            await trio.aclose_forcefully(stream)

    async def oversized(self) -> None:
        while self.running():
            stream = await self.open(handshake=self.rng.random() < 0.5)
            if stream is not None:
                try:
                    await stream.send_all(struct.pack(">I", 0x7FFF_FFFF) + b"\x00" * 65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                await trio.aclose_forcefully(stream)
                self.counts["oversized"] += 1
            await trio.sleep(0.05)

    async def never_reading(self) -> None:
        async with mqroute.connect(self.url) as conn:
            await conn.declare_queue("soak.stuck")
        streams = []
        for i in range(20):
            stream = await self.open()
            if stream is None:
                continue
            consume = [17, i + 1, "soak.stuck", f"stuck-{i}", 0, False, False, {}]
            await stream.send_all(frame(consume))
            streams.append(stream)
        async with mqroute.connect(self.url) as conn:
            body = b"s" * 64 * 1024
            while self.running():
                try:
                    await conn.publish("", "soak.stuck", body)
                    self.counts["to stuck consumers"] += 1
                except mqroute.MQRouteError:
                    await trio.sleep(0.1)
        for stream in streams:
            await trio.aclose_forcefully(stream)

    async def churn(self) -> None:
        while self.running():
            try:
                async with mqroute.connect(self.url, heartbeat=0):
                    pass
                self.counts["churn"] += 1
            except mqroute.MQRouteError:
                self.counts["churn refused"] += 1
                await trio.sleep(0.05)

    async def flood(self) -> None:
        async with mqroute.connect(self.url) as conn:
            await conn.declare_queue("soak.flood")
            body = b"f" * 1024
            async with conn.publisher(max_in_flight=1000) as pub:
                while self.running():
                    await pub.publish("", "soak.flood", body)
                    self.counts["flood"] += 1
                    if self.counts["flood"] % 1000 == 0 and conn.blocked:
                        self.counts["flood blocked"] += 1

    async def poison(self) -> None:
        async with mqroute.connect(self.url) as conn:
            await conn.declare_exchange("soak.dlx", "fanout")
            await conn.declare_queue("soak.dead", arguments={"x-max-length": 1000})
            await conn.bind_queue("soak.dead", "soak.dlx")
            await conn.declare_queue(
                "soak.poison",
                arguments={"x-dead-letter-exchange": "soak.dlx", "x-message-ttl": 50},
            )
            values: list[Any] = [1, "x", {"a": 1}, [1, None], [{"count": "many"}], 2**63 - 1, -5]
            while self.running():
                headers = {"x-death": self.rng.choice(values), "x-delay": self.rng.choice(values)}
                try:
                    await conn.publish("", "soak.poison", b"poison", headers=headers)
                    msg = await conn.get("soak.poison")
                    if msg is not None:
                        await msg.nack(requeue=False)
                    self.counts["poison"] += 1
                except mqroute.MQRouteError as exc:
                    self.counts[f"poison error {type(exc).__name__}"] += 1
                raw = await self.open()
                if raw is not None:
                    bad = {"expiration": self.rng.choice(["1" + "0" * 400, "9" * 5000, "-1"])}
                    with trio.move_on_after(2):
                        try:
                            await raw.send_all(frame([40, "", "soak.poison", b"x", bad, False]))
                            while await raw.receive_some(4096):
                                pass
                        except (trio.BrokenResourceError, OSError):
                            pass
                    await trio.aclose_forcefully(raw)

    async def well_behaved(self) -> None:
        async with mqroute.connect(self.url, client_name="soak-good") as conn:
            n = 0
            while self.running():
                n += 1
                t = trio.current_time()
                await conn.declare_queue("soak.good", durable=True)
                self.latency["declare"].append(trio.current_time() - t)
                message_id = f"good-{n}"
                t = trio.current_time()
                await conn.publish("", "soak.good", b"good", persistent=True, message_id=message_id)
                self.latency["publish"].append(trio.current_time() - t)
                self.confirmed.add(message_id)
                t = trio.current_time()
                async with conn.consume("soak.good", prefetch=10) as messages:
                    msg = await messages.__anext__()
                    self.latency["consume"].append(trio.current_time() - t)
                    t = trio.current_time()
                    await msg.ack()
                    await conn.declare_queue("soak.good", durable=True, passive=True)
                    self.latency["ack"].append(trio.current_time() - t)
                    self.received.add(msg.message_id or "")
                await trio.sleep(0.01)

    # --- the AMQP port ------------------------------------------------------------------

    async def amqp_killed_workers(self) -> None:
        async with mqroute.connect(self.url) as conn:
            await conn.declare_queue("soak.amqp.work")
            while self.running():
                async with conn.publisher(max_in_flight=200) as pub:
                    for i in range(200):
                        await pub.publish("", "soak.amqp.work", b"w" * 2048, message_id=str(i))
                worker = await trio.lowlevel.open_process(
                    [
                        sys.executable,
                        "-c",
                        PIKA_WORKER,
                        self.address.amqp_url,
                        "soak.amqp.work",
                        "ack-odd",
                    ],
                    stdout=subprocess.PIPE,
                )
                assert worker.stdout is not None
                with trio.move_on_after(10):
                    await worker.stdout.receive_some(100)
                    await trio.sleep(self.rng.random() * 0.3)
                os.kill(worker.pid, signal.SIGKILL)
                await worker.wait()
                await worker.stdout.aclose()
                self.counts["amqp workers killed"] += 1
                await conn.purge_queue("soak.amqp.work")
                await trio.sleep(2)  # each worker's start costs a fifth of a core-second

    async def amqp_resets(self) -> None:
        while self.running():
            phase = self.rng.choice(["handshake", "consuming", "transaction"])
            try:
                raw = await RawAmqp.connect(self.address, login=phase != "handshake")
                if phase == "consuming":
                    await raw.open_channel()
                    await raw.send(1, amqp.Basic.Qos(prefetch_count=20))
                    await raw.send(1, amqp.Basic.Consume(queue="soak.amqp.work"))
                    await raw.method()
                elif phase == "transaction":
                    await raw.open_channel()
                    await raw.send(1, amqp.Tx.Select())
                    await raw.send_raw(content("", "soak.amqp.work", b"t" * 4096) * 20)
                await trio.sleep(self.rng.random() * 0.05)
                raw.reset()
                self.counts[f"amqp reset in {phase}"] += 1
            except AMQP_ERRORS:
                self.counts["amqp reset refused"] += 1
                await trio.sleep(0.05)

    async def amqp_tables(self) -> None:
        wide = b"".join(b"\x01kV" for _ in range(40_000))  # 40,000 void entries
        import struct as _struct

        wide_table = _struct.pack(">I", len(wide)) + wide
        while self.running():
            try:
                raw = await RawAmqp.connect(self.address, login=False)
                if self.rng.random() < 0.5:
                    props = table_bytes(500, kind=self.rng.choice("FA"))
                    await raw.send_raw(start_ok_bytes(props, b"PLAIN", b"\x00guest\x00guest"))
                    self.counts["amqp deep start-ok"] += 1
                else:
                    await raw.send(
                        0,
                        amqp.Connection.StartOk(
                            client_properties={"product": "soak"},
                            mechanism="PLAIN",
                            response="\x00guest\x00guest",
                        ),
                    )
                    tune = await raw.method()
                    await raw.send(0, amqp.Connection.TuneOk(tune.channel_max, tune.frame_max, 0))
                    await raw.send(0, amqp.Connection.Open("/"))
                    await raw.method()
                    await raw.open_channel()
                    payload = _struct.pack(">HHQH", 60, 0, 1, 0x2000) + wide_table
                    header = _struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce"
                    publish = amqp_frame.marshal(amqp.Basic.Publish(routing_key="soak.none"), 1)
                    body = amqp_frame.marshal(ContentBody(b"x"), 1)
                    for _ in range(3):
                        await raw.send_raw(publish + header + body)
                    self.counts["amqp wide tables"] += 3
                with trio.move_on_after(2):
                    await raw.until_closed()
                raw.reset()
            except AMQP_ERRORS:
                self.counts["amqp tables error"] += 1
                await trio.sleep(0.05)

    async def amqp_unread(self) -> None:
        async with mqroute.connect(self.url) as conn:
            await conn.declare_queue("soak.amqp.big", arguments={"x-max-length": 2000})
            async with conn.publisher(max_in_flight=200) as pub:
                for _ in range(2000):
                    await pub.publish("", "soak.amqp.big", b"g" * 16 * 1024)
        get = amqp_frame.marshal(amqp.Basic.Get(queue="soak.amqp.big"), 1)
        returned = content("", "soak.nowhere", b"r" * 16 * 1024, mandatory=True)
        while self.running():
            try:
                raw = await RawAmqp.connect(self.address)
                await raw.open_channel()
                kind = self.rng.choice(["get loop", "return flood"])
                with trio.move_on_after(5):
                    data = get * 1000 if kind == "get loop" else returned * 1000
                    while True:
                        await raw.send_raw(data)
                raw.reset()
                self.counts[f"amqp unread {kind}"] += 1
            except AMQP_ERRORS:
                self.counts["amqp unread error"] += 1
                await trio.sleep(0.05)

    async def amqp_fuzz(self) -> None:
        login = b"".join(login_frames())
        while self.running():
            try:
                raw = await RawAmqp.connect(self.address, login=False)
                data = login + random_frames(self.rng, 50)
                if self.rng.random() < 0.2:  # trickled: a slow frame
                    await raw.send_raw(data[:40])
                    for byte in data[40:60]:
                        await raw.send_raw(bytes([byte]))
                        await trio.sleep(1)
                else:
                    await raw.send_raw(data)
                with trio.move_on_after(2):
                    await raw.until_closed()
                raw.reset()
                self.counts["amqp fuzz"] += 1
            except AMQP_ERRORS:
                self.counts["amqp fuzz refused"] += 1
                await trio.sleep(0.05)

    async def amqp_well_behaved(self) -> None:
        """A pika client's steps: declare, confirmed persistent publish, get (and ack)."""
        latency = self.latency

        def rounds() -> None:
            connection = pika.BlockingConnection(pika.URLParameters(self.address.amqp_url))
            ch = connection.channel()
            ch.confirm_delivery()
            n = 0
            while trio.from_thread.run_sync(self.running):
                n += 1
                started = time.monotonic()
                ch.queue_declare("soak.pika", durable=True)
                latency["pika declare"].append(time.monotonic() - started)
                started = time.monotonic()
                props = pika.BasicProperties(delivery_mode=2, message_id=f"p-{n}")
                ch.basic_publish("", "soak.pika", b"good", props)
                latency["pika publish"].append(time.monotonic() - started)
                self.confirmed.add(f"p-{n}")
                started = time.monotonic()
                method, got, _ = ch.basic_get("soak.pika")
                latency["pika get"].append(time.monotonic() - started)
                if method is not None:
                    ch.basic_ack(method.delivery_tag)
                    self.received.add(got.message_id or "")
                time.sleep(0.01)
            connection.close()

        await trio.to_thread.run_sync(rounds, abandon_on_cancel=True)


async def fill_backlog(url: str) -> set[str]:
    ids = set()
    async with mqroute.connect(url) as conn:
        await conn.declare_queue("soak.backlog", durable=True)
        async with conn.publisher(max_in_flight=500) as pub:
            for i in range(BACKLOG):
                await pub.publish(
                    "", "soak.backlog", b"b" * 200, persistent=True, message_id=f"b-{i}"
                )
                ids.add(f"b-{i}")
    return ids


async def drain_backlog(url: str) -> set[str]:
    seen = set()
    async with mqroute.connect(url) as conn, conn.consume("soak.backlog", prefetch=500) as msgs:
        with trio.move_on_after(120):
            async for msg in msgs:
                seen.add(msg.message_id or "")
                await msg.ack(multiple=True)
                if len(seen) >= BACKLOG:
                    break
    return seen


async def main(minutes: float) -> int:
    port, amqp_port = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="mqroute-soak-")
    server = subprocess.Popen(
        server_command(
            port,
            data,
            *("--memory-high-watermark", str(WATERMARK), "--log-level", "warning"),
            *("--amqp-port", str(amqp_port)),
        ),
        stderr=open(os.path.join(data, "server.log"), "w"),
    )
    wait_for_port(port)
    url = f"mqroute://127.0.0.1:{port}"
    print(f"server pid {server.pid}, log {data}/server.log; filling a backlog of {BACKLOG:,}")
    backlog = await fill_backlog(url)
    soak = Soak("127.0.0.1", port, amqp_port, trio.current_time() + minutes * 60)
    peak_rss = 0.0
    exited = None

    async def watch() -> None:
        nonlocal peak_rss, exited
        last = 0.0
        while soak.running():
            if server.poll() is not None:
                exited = server.returncode
                return
            peak_rss = max(peak_rss, rss_mb(server.pid)[0])
            if trio.current_time() - last >= 30:
                last = trio.current_time()
                p99 = {k: _p99(v) for k, v in soak.latency.items()}
                print(
                    f"  {minutes * 60 - (soak.deadline - trio.current_time()):5.0f}s  "
                    f"rss {peak_rss:6.0f} MB  p99 ms {p99}  {dict(soak.counts)}",
                    flush=True,
                )
            await trio.sleep(0.5)

    started = time.monotonic()
    # At the deadline every task stops, wherever it waits (a blocked flood waits for ever).
    async with trio.open_nursery() as nursery:
        nursery.cancel_scope.deadline = soak.deadline + 1
        nursery.start_soon(watch)
        for task in (
            soak.fuzz,
            soak.fuzz,
            soak.slowloris,
            soak.slowloris,
            soak.oversized,
            soak.never_reading,
            soak.churn,
            soak.flood,
            soak.poison,
            soak.amqp_killed_workers,
            soak.amqp_resets,
            soak.amqp_tables,
            soak.amqp_unread,
            soak.amqp_fuzz,
            soak.amqp_fuzz,
        ):
            nursery.start_soon(_guard, task, soak.counts)
        # The well-behaved clients run in processes of their own: in this one they would
        # share the CPU and the GIL with the hostile load, and time that, not the broker.
        for kind in ("sdk", "pika"):
            nursery.start_soon(_probe, kind, port, amqp_port, minutes * 60 - 2, soak)
    print(f"ran {time.monotonic() - started:.0f}s")
    alive = server.poll() is None and exited is None
    leftover = await drain_backlog(url) if alive else set()
    server.send_signal(signal.SIGTERM)
    server.wait(60)
    p99 = {k: _p99(v) for k, v in soak.latency.items()}
    print(f"hostile work done: {dict(soak.counts)}")
    print(f"well-behaved client p99 (ms): {p99}; rounds {len(soak.latency['declare']):,}")
    print(f"server peak RSS {peak_rss:.0f} MB; memory watermark {WATERMARK / 2**20:.0f} MB")
    print(f"server exited during the soak: {exited is not None} (code {exited})")
    print(f"backlog intact: {leftover == backlog} ({len(leftover):,} of {len(backlog):,})")
    lost = soak.confirmed - soak.received
    print(
        f"well-behaved messages confirmed {len(soak.confirmed):,}, received "
        f"{len(soak.received & soak.confirmed):,}, missing {len(lost)} (the last may be "
        "unconsumed when time ran out)"
    )
    ok = alive and leftover == backlog and len(lost) <= 1 and max(p99.values()) <= 100
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


async def _probe(kind: str, port: int, amqp_port: int, seconds: float, soak: Soak) -> None:
    result = await trio.run_process(
        [
            sys.executable,
            __file__,
            "--probe",
            kind,
            "--port",
            str(port),
            "--amqp-port",
            str(amqp_port),
            "--seconds",
            str(seconds),
        ],
        capture_stdout=True,
    )
    found = json.loads(result.stdout.decode().splitlines()[-1])
    for step, values in found["latency"].items():
        soak.latency[step] += values
    soak.confirmed |= set(found["confirmed"])
    soak.received |= set(found["received"])


async def probe(kind: str, port: int, amqp_port: int, seconds: float) -> None:
    """One well-behaved client for ``seconds``; prints its timings and ids as JSON."""
    soak = Soak("127.0.0.1", port, amqp_port, trio.current_time() + seconds)
    await (soak.well_behaved() if kind == "sdk" else soak.amqp_well_behaved())
    latency = {k: v for k, v in soak.latency.items() if v}
    print(
        json.dumps(
            {
                "latency": latency,
                "confirmed": sorted(soak.confirmed),
                "received": sorted(soak.received),
            }
        )
    )


def _p99(values: list[float]) -> float:
    if len(values) < 2:
        return float("nan")
    return round(statistics.quantiles(values, n=100)[98] * 1000, 1)


async def _guard(task: Any, counts: Counter[str]) -> None:
    """A hostile task that errors is restarted: the point is the server, not the load."""
    while True:
        try:
            await task()
            return
        except Exception as exc:
            counts[f"{task.__name__} error {type(exc).__name__}"] += 1
            await trio.sleep(0.1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--probe", choices=["sdk", "pika"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--amqp-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        trio.run(probe, args.probe, args.port, args.amqp_port, args.seconds)
        raise SystemExit(0)
    raise SystemExit(trio.run(main, args.minutes))
