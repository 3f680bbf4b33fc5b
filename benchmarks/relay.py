"""The ceiling: a bare relay that speaks just enough of mqroute's protocol to pass publishes on.

    .venv/bin/python benchmarks/relay.py PORT

It decodes every Publish and re-encodes it as a Deliver to the first consumer, confirms each
read's publishes with one multiple Confirm, and answers any request with an Ok that satisfies
the SDK. No queues, no routing, no persistence; acks only count against the consumer's
prefetch, which it honours as a broker must (the SDK refuses more), holding the excess in one
list. What is left is the cost of the protocol and the I/O written the way mqroute's server
writes them. benchmarks/compare_rabbitmq.py runs it beside
mqroute and reports mqroute's rate as a fraction of it.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Any

import trio

from mqroute.protocol import (
    NEED_DATA,
    Ack,
    Close,
    Confirm,
    Connection,
    Consume,
    Deliver,
    Hello,
    Ok,
    PeerClosed,
    Publish,
    Role,
    Welcome,
)


class RelayConsumer:
    """A consumer and its prefetch window: deliveries sent, acked, and waiting for room."""

    def __init__(self, stream: trio.SocketStream, proto: Connection, tag: str, prefetch: int):
        self.stream, self.proto, self.tag, self.prefetch = stream, proto, tag, prefetch
        self.sent = 0  # the last delivery tag sent
        self.acked = 0  # every tag up to this one is acked
        self.singles = 0  # single acks above ``acked``
        self.waiting: deque[Publish] = deque()
        self.sending = trio.Lock()  # its own handler and the producers' both write to it

    def ack(self, ev: Ack) -> None:
        if ev.multiple:
            self.acked, self.singles = max(self.acked, ev.delivery_tag), 0
        else:
            self.singles += 1

    def take(self) -> list[bytes]:
        """Deliveries for as many waiting publishes as the window has room for."""
        out = []
        while self.waiting and (
            not self.prefetch or self.sent - self.acked - self.singles < self.prefetch
        ):
            ev = self.waiting.popleft()
            self.sent += 1
            out.append(
                self.proto.send(
                    Deliver(
                        consumer_tag=self.tag,
                        delivery_tag=self.sent,
                        redelivered=False,
                        exchange=ev.exchange,
                        routing_key=ev.routing_key,
                        body=ev.body,
                        properties=ev.properties,
                    )
                )
            )
        return out


async def relay(port: int) -> None:
    consumers: list[RelayConsumer] = []

    async def handle(stream: trio.SocketStream) -> None:
        proto = Connection(Role.SERVER)
        closing = False
        published = 0  # the publish sequence number, as the SDK counts it
        mine: RelayConsumer | None = None
        while not closing:
            data = await stream.receive_some(256 * 1024)
            proto.receive_data(data)
            out: list[bytes] = []
            confirmed = published
            target = consumers[0] if consumers else None
            while (ev := proto.next_event()) is not NEED_DATA:
                if isinstance(ev, PeerClosed):
                    consumers[:] = [c for c in consumers if c.stream is not stream]
                    return
                if isinstance(ev, Hello):
                    welcome = Welcome(
                        version=2,
                        server="relay",
                        heartbeat_ms=0,
                        max_frame_size=1 << 24,
                        connection_id=f"r{id(stream)}",
                    )
                    out.append(proto.send(welcome))
                elif isinstance(ev, Publish):
                    published += 1
                    if target is not None:
                        target.waiting.append(ev)
                elif isinstance(ev, Ack):
                    if mine is not None:
                        mine.ack(ev)
                elif isinstance(ev, Close):
                    closing = True
                elif hasattr(ev, "rid"):
                    if isinstance(ev, Consume):
                        mine = RelayConsumer(stream, proto, ev.consumer_tag, ev.prefetch)
                        consumers.append(mine)
                    result: dict[str, Any] = {
                        "queue": getattr(ev, "name", ""),
                        "message_count": 0,
                        "consumer_count": 0,
                        "consumer_tag": getattr(ev, "consumer_tag", ""),
                    }
                    out.append(proto.send(Ok(rid=ev.rid, result=result)))
            if published != confirmed:
                out.append(
                    proto.send(
                        Confirm(
                            seq=published, multiple=True, ok=True, error_code=None, error_text=None
                        )
                    )
                )
            if closing:
                out.append(proto.send(Close(code=None, text="bye")))
            if target is not None and target is not mine:
                async with target.sending:
                    fwd = target.take()
                    if fwd:
                        await target.stream.send_all(b"".join(fwd))
            if mine is not None:
                async with mine.sending:
                    if not closing:
                        out += mine.take()
                    if out:
                        await stream.send_all(b"".join(out))
            elif out:
                await stream.send_all(b"".join(out))

    await trio.serve_tcp(handle, port, host="127.0.0.1")


if __name__ == "__main__":
    trio.run(relay, int(sys.argv[1]))
