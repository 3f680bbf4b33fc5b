"""The ceiling: a bare relay that speaks just enough of mqroute's protocol to pass publishes on.

    .venv/bin/python benchmarks/relay.py PORT

It decodes every Publish and re-encodes it as a Deliver to the first consumer, confirms each
read's publishes with one multiple Confirm, and answers any request with an Ok that satisfies
the SDK. No queues, no routing, no acks: what is left is the cost of the protocol and the I/O
written the way mqroute's server writes them. benchmarks/compare_rabbitmq.py runs it beside
mqroute and reports mqroute's rate as a fraction of it.
"""

from __future__ import annotations

import sys

import trio

from mqroute.protocol import (
    NEED_DATA,
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


async def relay(port: int) -> None:
    consumers: list[tuple[trio.SocketStream, Connection, str]] = []
    tags = [0]

    async def handle(stream: trio.SocketStream) -> None:
        proto = Connection(Role.SERVER)
        closing = False
        published = 0  # the publish sequence number, as the SDK counts it
        while not closing:
            data = await stream.receive_some(256 * 1024)
            proto.receive_data(data)
            out: list[bytes] = []
            fwd: list[bytes] = []
            confirmed = published
            while (ev := proto.next_event()) is not NEED_DATA:
                if isinstance(ev, PeerClosed):
                    consumers[:] = [c for c in consumers if c[0] is not stream]
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
                    if consumers:
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
                elif hasattr(ev, "rid"):
                    if isinstance(ev, Consume):
                        consumers.append((stream, proto, ev.consumer_tag))
                    result = {
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
            if fwd:
                await consumers[0][0].send_all(b"".join(fwd))
            if out:
                await stream.send_all(b"".join(out))

    await trio.serve_tcp(handle, port, host="127.0.0.1")


if __name__ == "__main__":
    trio.run(relay, int(sys.argv[1]))
