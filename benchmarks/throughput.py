"""End-to-end throughput: one producer process → broker process → one consumer process.

Run by hand (not part of the test suite):

    .venv/bin/python benchmarks/throughput.py --count 100000 --runs 3

Each run starts a fresh server process, a consumer (prefetch 100, ack multiple every 50) and a
producer (pipelined, 1,000 unconfirmed in flight), 256-byte transient bodies. The same
producer and consumer then run against a *bare relay*: a trio process that decodes every
Publish frame and re-encodes it as a Deliver frame, nothing else — the ceiling for a broker
written this way. Runs alternate (A/B) and the medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import trio

HERE = os.path.abspath(__file__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- roles, each run in its own process -------------------------------------------------------


async def produce(url: str, count: int, size: int) -> None:
    import mqroute

    body = b"x" * size
    async with mqroute.connect(url, client_name="bench producer") as conn:
        await conn.declare_queue("bench")
        start = time.time()
        async with conn.publisher(max_in_flight=1000) as pub:
            for _ in range(count):
                await pub.publish("", "bench", body)
        print(json.dumps({"publish_start": start, "publish_end": time.time()}), flush=True)


async def consume(url: str, count: int) -> None:
    import mqroute

    async with mqroute.connect(url, client_name="bench consumer") as conn:
        await conn.declare_queue("bench")
        got = 0
        async with conn.consume("bench", prefetch=100) as messages:
            print("ready", flush=True)
            async for msg in messages:
                got += 1
                if got == 1:
                    first = time.time()
                if got % 50 == 0 or got == count:
                    await msg.ack(multiple=True)
                if got == count:
                    break
        print(json.dumps({"first": first, "last": time.time()}), flush=True)


async def relay(port: int) -> None:
    """Speak just enough of the protocol to pass publishes on as deliveries."""
    from mqroute.protocol import (
        NEED_DATA,
        Close,
        Confirm,
        Connection,
        Consume,
        DeclareQueue,
        Deliver,
        Hello,
        Ok,
        PeerClosed,
        Publish,
        Role,
        Welcome,
    )

    consumers: list[tuple[trio.SocketStream, Connection, str]] = []
    tags = [0]

    async def handle(stream: trio.SocketStream) -> None:
        proto = Connection(Role.SERVER)
        seq = 0
        closing = False
        while True:
            data = await stream.receive_some(256 * 1024)
            proto.receive_data(data)
            out: list[bytes] = []
            fwd: list[bytes] = []
            while (ev := proto.next_event()) is not NEED_DATA:
                if isinstance(ev, PeerClosed):
                    return
                if isinstance(ev, Hello):
                    out.append(
                        proto.send(
                            Welcome(
                                version=1,
                                server="relay",
                                heartbeat_ms=0,
                                max_frame_size=1 << 24,
                                connection_id="r",
                            )
                        )
                    )
                elif isinstance(ev, DeclareQueue):
                    out.append(
                        proto.send(
                            Ok(
                                rid=ev.rid,
                                result={"queue": ev.name, "message_count": 0, "consumer_count": 0},
                            )
                        )
                    )
                elif isinstance(ev, Consume):
                    out.append(proto.send(Ok(rid=ev.rid, result={"consumer_tag": ev.consumer_tag})))
                    consumers.append((stream, proto, ev.consumer_tag))
                elif hasattr(ev, "rid"):  # Cancel and the like
                    out.append(proto.send(Ok(rid=ev.rid, result={})))
                elif isinstance(ev, Publish) and consumers:
                    seq += 1
                    tags[0] += 1
                    _, cproto, ctag = consumers[0]
                    fwd.append(
                        cproto.send(
                            Deliver(
                                consumer_tag=ctag,
                                delivery_tag=tags[0],
                                redelivered=False,
                                exchange=ev.exchange,
                                routing_key=ev.routing_key,
                                body=ev.body,
                                properties=ev.properties,
                            )
                        )
                    )
                elif isinstance(ev, Close):
                    closing = True
            if seq:
                out.append(
                    proto.send(
                        Confirm(seq=seq, multiple=True, ok=True, error_code=None, error_text=None)
                    )
                )
            if closing:
                out.append(proto.send(Close(code=None, text="bye")))
            if fwd:
                await consumers[0][0].send_all(b"".join(fwd))
            if out:
                await stream.send_all(b"".join(out))

    await trio.serve_tcp(handle, port, host="127.0.0.1")


# --- orchestration ------------------------------------------------------------------------------


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, HERE, *args], stdout=subprocess.PIPE, text=True)


def one_run(kind: str, count: int, size: int) -> float:
    port = free_port()
    if kind == "mqroute":
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mqroute",
                "server",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--data-dir",
                f"/tmp/mqroute-bench-{port}",
            ]
        )
    else:
        server = spawn("relay", str(port))
    url = f"mqroute://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        consumer = spawn("consume", url, str(count))
        assert consumer.stdout is not None
        assert consumer.stdout.readline().strip() == "ready"
        producer = spawn("produce", url, str(count), str(size))
        assert producer.stdout is not None
        pub = json.loads(producer.stdout.readline())
        con = json.loads(consumer.stdout.readline())
        producer.wait(60)
        consumer.wait(60)
        return count / (con["last"] - pub["publish_start"])
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"mqroute": [], "relay": []}
    for i in range(args.runs):
        for kind in ("mqroute", "relay"):
            rate = one_run(kind, args.count, args.size)
            rates[kind].append(rate)
            print(f"run {i + 1}: {kind:<8} {rate:10,.0f} msg/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"\n{args.count:,} messages of {args.size} B, 1 producer → 1 consumer, transient, "
        f"prefetch 100, multi-ack every 50, medians of {args.runs}:"
    )
    print(f"  mqroute      {med['mqroute']:10,.0f} msg/s")
    print(f"  bare relay   {med['relay']:10,.0f} msg/s   (decode + re-encode only: the ceiling)")
    print(f"  mqroute / relay = {med['mqroute'] / med['relay']:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("produce", "consume", "relay"):
        role, rest = sys.argv[1], sys.argv[2:]
        if role == "produce":
            trio.run(produce, rest[0], int(rest[1]), int(rest[2]))
        elif role == "consume":
            trio.run(consume, rest[0], int(rest[1]))
        else:
            trio.run(relay, int(rest[0]))
    else:
        main()
