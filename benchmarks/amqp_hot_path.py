"""Where an AMQP message's microseconds go in the server, stage by stage, in process.

    .venv/bin/python benchmarks/amqp_hot_path.py

The frames are the ones aio-pika writes (a publish, a content header with a message id,
priority 0, delivery mode 1 and an empty headers table, a 256 B body); one queue and one
consumer with no prefetch limit (the stages drain by hand, as hot_path.py's), multi-ack every
50. Each stage runs over --messages messages, --runs times; printed are medians in µs per
message, to set beside hot_path.py's native stages for the same work.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import uuid
from collections.abc import Callable

from pamqp import commands as amqp
from pamqp import frame as amqp_frame
from pamqp import header as amqp_header
from pamqp.body import ContentBody

from mqroute.core.vhost import Vhost
from mqroute.protocol.amqp import HEADER_RECEIVED, NEED_DATA, PROTOCOL_HEADER, AmqpFrames
from mqroute.server.amqp_front import AmqpFrontEnd
from mqroute.server.startup import GC_THRESHOLD

BODY = b"x" * 256


def publish_frames(n: int, repeated: bool = False) -> bytes:
    """n publishes as aio-pika writes them (each with its own message id), or with the same
    properties each time (delivery mode 1 alone, as pika writes them by default)."""
    out = []
    for _ in range(n):
        props = (
            amqp.Basic.Properties(delivery_mode=1)
            if repeated
            else amqp.Basic.Properties(
                delivery_mode=1, priority=0, headers={}, message_id=uuid.uuid4().hex
            )
        )
        out.append(amqp_frame.marshal(amqp.Basic.Publish(routing_key="q"), 1))
        out.append(amqp_frame.marshal(amqp_header.ContentHeader(0, len(BODY), props), 1))
        out.append(amqp_frame.marshal(ContentBody(BODY), 1))
    return b"".join(out)


def frames_of(data: bytes) -> list[tuple[int, object]]:
    frames = AmqpFrames()
    frames.frame_max = 131072
    frames.receive_data(PROTOCOL_HEADER + data)
    assert frames.next_frame() == HEADER_RECEIVED
    out = []
    while (item := frames.next_frame()) is not NEED_DATA:
        out.append(item)
    return out


def stage_decode(n: int, repeated: bool = False) -> float:
    data = publish_frames(n, repeated)
    frames = AmqpFrames()
    frames.frame_max = 131072
    frames.receive_data(PROTOCOL_HEADER + data)
    frames.next_frame()
    started = time.perf_counter()
    while frames.next_frame() is not NEED_DATA:
        pass
    return time.perf_counter() - started


def open_front(consumer: bool) -> tuple[Vhost, AmqpFrontEnd]:
    from mqroute.core.access import FULL

    vhost = Vhost()
    front = AmqpFrontEnd("c", max_message_size=1 << 27, heartbeat=0)
    front.opened(vhost, FULL)
    front.frame_max = 131072
    for method in (
        amqp.Channel.Open(),
        amqp.Queue.Declare(queue="q"),
        amqp.Basic.Qos(prefetch_count=0),  # as hot_path.py: the outbox is drained by hand
    ):
        front.handle(1, method, 0.0)
    if consumer:
        front.handle(1, amqp.Basic.Consume(queue="q", consumer_tag="ctag"), 0.0)
    front.output()
    front.out.clear()
    return vhost, front


def stage_handle(n: int, consumer: bool) -> float:
    """front.handle for each decoded frame: channel dispatch, assembly, Vhost.publish."""
    vhost, front = open_front(consumer)
    frames = frames_of(publish_frames(n))
    started = time.perf_counter()
    for i, (channel, frame) in enumerate(frames):
        front.handle(channel, frame, 0.0)
        if i % 3000 == 2999:
            for ch in front.channels.values():  # as the writer would
                vhost.take_events(ch.session)
    return time.perf_counter() - started


def stage_deliver_and_ack(n: int) -> tuple[float, float]:
    _, front = open_front(True)
    frames = frames_of(publish_frames(n))
    encode_time = ack_time = 0.0
    for first in range(0, len(frames), 3000):
        for channel, frame in frames[first : first + 3000]:
            front.handle(channel, frame, 0.0)
        started = time.perf_counter()
        front.output()
        encode_time += time.perf_counter() - started
        base = first // 3 + 1
        acks = [
            (1, amqp.Basic.Ack(delivery_tag=t, multiple=True))
            for t in range(base + 49, base + 1000, 50)
        ]
        started = time.perf_counter()
        for channel, ack in acks:
            front.handle(channel, ack, 0.0)
        ack_time += time.perf_counter() - started
    return encode_time, ack_time


def median_us(measure: Callable[[], float], n: int, runs: int) -> float:
    return statistics.median(measure() for _ in range(runs)) / n * 1e6


def main() -> None:
    gc.set_threshold(GC_THRESHOLD, 20, 10)  # as `mqroute server` runs
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    n, runs = args.messages, args.runs
    decode = median_us(lambda: stage_decode(n), n, runs)
    decode_repeated = median_us(lambda: stage_decode(n, True), n, runs)
    handle = median_us(lambda: stage_handle(n, False), n, runs)
    with_dispatch = median_us(lambda: stage_handle(n, True), n, runs)
    pairs = [stage_deliver_and_ack(n) for _ in range(runs)]
    encode = statistics.median(p[0] for p in pairs) / n * 1e6
    ack = statistics.median(p[1] for p in pairs) / n * 1e6
    rows = [
        ("decode publish + header + body (3 frames)", decode),
        ("handle them: assembly + Vhost.publish", handle),
        ("dispatch to a consumer (tag, unacked, Delivery)", with_dispatch - handle),
        ("encode deliver + header + body (front.output)", encode),
        ("handle basic.ack (multiple, every 50) + settle + credit", ack),
    ]
    print(f"µs per message, medians of {runs} runs of {n:,} messages of 256 B\n")
    for label, value in rows:
        print(f"  {label:<58}{value:6.2f}")
    print(f"  {'sum':<58}{sum(v for _, v in rows):6.2f}")
    label = "decode, when the properties repeat (pika's default)"
    print(f"\n  {label:<58}{decode_repeated:6.2f}")


if __name__ == "__main__":
    main()
