"""A lean AMQP 0-9-1 bench client: pre-encoded publishes written in batches, confirms read in
bulk, deliveries counted and multi-acked. It costs the client little per message, so a run
measures the broker's front end rather than pika's or aio-pika's CPU (both need more per
message than the broker does). Used by front_end_cpu.py; speaks to any AMQP broker.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from pamqp import commands as amqp
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from pamqp.body import ContentBody

from mqroute.bench.runner import BenchOptions, Stats, make_body

_HEADER = struct.Struct(">BHI")
_DELIVER = struct.pack(">HH", 60, 60)
_ACK = struct.pack(">HH", 60, 80)


class Link:
    """One blocking AMQP connection with one channel, opened as guest."""

    def __init__(self, url: str) -> None:
        hostport = url.split("@")[-1].strip("/").split("/")[0]
        host, port = hostport.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self.expect(amqp.Connection.Start)
        self.send(0, amqp.Connection.StartOk(response="\0guest\0guest", mechanism="PLAIN"))
        tune = self.expect(amqp.Connection.Tune)
        self.send(0, amqp.Connection.TuneOk(tune.channel_max, tune.frame_max, 0))
        self.send(0, amqp.Connection.Open("/"))
        self.expect(amqp.Connection.OpenOk)
        self.send(1, amqp.Channel.Open())
        self.expect(amqp.Channel.OpenOk)

    def send(self, channel: int, frame: Any) -> None:
        self.sock.sendall(amqp_frame.marshal(frame, channel))

    def frames(self) -> list[tuple[int, bytes]]:
        """The whole frames read so far, as (kind, payload); reads once if there are none."""
        out = []
        at, buf = 0, self.buffer
        while len(buf) - at >= 7:
            kind, _, size = _HEADER.unpack_from(buf, at)
            if len(buf) - at < size + 8:
                break
            out.append((kind, bytes(buf[at + 7 : at + 7 + size])))
            at += size + 8
        del buf[:at]
        if not out:
            self._read()
        return out

    def _read(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the broker closed the connection")
        self.buffer += data

    def expect(self, kind: type) -> Any:
        while True:
            for frame_kind, payload in self.frames():
                if frame_kind == 1:
                    wire = _HEADER.pack(1, 0, len(payload)) + payload + b"\xce"
                    method = amqp_frame.unmarshal(wire)[2]
                    if isinstance(method, kind):
                        return method
                    if isinstance(method, amqp.Connection.Close | amqp.Channel.Close):
                        raise ConnectionError(method.reply_text)

    def close(self) -> None:
        self.sock.close()


def publish_head(opts: BenchOptions, key: str) -> bytes:
    """A publish and its content header: the same for every message of one key."""
    mode = 2 if opts.persistent else 1
    props = amqp.Basic.Properties(delivery_mode=mode)
    return amqp_frame.marshal(
        amqp.Basic.Publish(exchange=opts.exchange_name, routing_key=key), 1
    ) + amqp_frame.marshal(amqp_header.ContentHeader(0, opts.size, props), 1)


def body_frame(body: bytes) -> bytes:
    return amqp_frame.marshal(ContentBody(body), 1)


class RawAmqpDriver:
    """Setup and teardown as pika's driver; producing and consuming with ``Link``."""

    @staticmethod
    def setup(opts: BenchOptions) -> None:
        import compare_rabbitmq

        compare_rabbitmq._rabbit_setup(opts)

    @staticmethod
    def teardown(opts: BenchOptions) -> None:
        import compare_rabbitmq

        compare_rabbitmq._rabbit_teardown(opts)

    @staticmethod
    def produce(opts: BenchOptions, stats: Stats) -> None:
        import compare_rabbitmq

        link = Link(compare_rabbitmq.RABBIT_URL)
        link.send(1, amqp.Confirm.Select())
        link.expect(amqp.Confirm.SelectOk)
        body = make_body(opts.size)  # stamped: consumers measure end-to-end latency
        heads = [publish_head(opts, key) for key in opts.routing_keys]
        window, batch = opts.window, min(opts.window, 100)
        sent = confirmed = 0
        sent_at: dict[int, int] = {}
        while not stats.stop and (opts.count is None or confirmed < opts.count):
            room = window - (sent - confirmed)
            todo = min(room, batch)
            if opts.count is not None:
                todo = min(todo, opts.count - sent)
            if todo > 0:
                now = time.monotonic_ns()
                tail = body_frame(body())  # one stamp per batch: it is written at once
                link.sock.sendall(
                    b"".join(heads[(sent + i) % len(heads)] + tail for i in range(todo))
                )
                for _ in range(todo):
                    sent += 1
                    sent_at[sent] = now
                    stats.sent()
                continue
            for kind, payload in link.frames():
                if kind == 1 and payload[:4] == _ACK:
                    upto = struct.unpack_from(">Q", payload, 4)[0]  # mqroute confirms in order
                    now = time.monotonic_ns()
                    for seq in range(confirmed + 1, upto + 1):
                        stats.latency.add(now - sent_at.pop(seq, now))
                    confirmed = max(confirmed, upto)
        link.close()

    @staticmethod
    def consume(opts: BenchOptions, queues: list[str], stats: Stats) -> None:
        import compare_rabbitmq

        link = Link(compare_rabbitmq.RABBIT_URL)
        link.send(1, amqp.Basic.Qos(prefetch_count=opts.prefetch))
        link.expect(amqp.Basic.QosOk)
        for name in queues:
            link.send(1, amqp.Basic.Consume(queue=name, no_ack=opts.auto_ack))
            link.expect(amqp.Basic.ConsumeOk)
        stats.ready()
        every, n = opts.multi_ack_every, 0
        link.sock.settimeout(0.05)  # to see stats.stop
        acks: list[bytes] = []
        while not stats.stop:
            try:
                for kind, payload in link.frames():
                    if kind == 3:
                        stats.received(payload)
                    elif kind == 1 and payload[:4] == _DELIVER:
                        n += 1
                        if not opts.auto_ack and n % every == 0:
                            tag = struct.unpack_from(">Q", payload, 5 + payload[4])[0]
                            ack = amqp.Basic.Ack(delivery_tag=tag, multiple=True)
                            acks.append(amqp_frame.marshal(ack, 1))
                if acks:
                    link.sock.sendall(b"".join(acks))
                    acks.clear()
            except TimeoutError:
                continue
        link.close()
