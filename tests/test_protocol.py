"""The sans-I/O protocol: round trips, input split at every byte, and garbage handling."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable

import attrs
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqroute.errors import ProtocolError
from mqroute.model import Properties
from mqroute.protocol import (
    FRAME_TYPES,
    NEED_DATA,
    Ack,
    Bind,
    Cancel,
    Cancelled,
    Close,
    Confirm,
    Connection,
    Consume,
    DeclareExchange,
    DeclareQueue,
    DeleteExchange,
    DeleteQueue,
    Deliver,
    Error,
    Extend,
    Frame,
    Get,
    GetOk,
    Heartbeat,
    Hello,
    Nack,
    Ok,
    PeerClosed,
    Publish,
    PublishTooLarge,
    PurgeQueue,
    Redrive,
    Return,
    Role,
    State,
    TimedOut,
    Unbind,
    Welcome,
    decode_payload,
    encode,
    encode_deliver,
    encode_deliver_tail,
    encode_publish,
    negotiate_frame_size,
)


def send_all(conn: Connection, frames: Iterable[Frame]) -> bytes:
    """Bytes for several frames, for one write."""
    return b"".join([conn.send(frame) for frame in frames])


PROPS = Properties(
    content_type="application/json",
    content_encoding="gzip",
    headers={"a": 1, "nested": {"l": [1, "x", None, True, 1.5, b"b"]}},
    persistent=True,
    priority=5,
    correlation_id="c",
    reply_to="r",
    expiration="60000",
    message_id="m",
    timestamp=1700000000,
    type="t",
    user_id="u",
    app_id="app",
)

CLIENT_FRAMES = [
    DeclareExchange(
        rid=1,
        name="x",
        type="topic",
        durable=True,
        auto_delete=False,
        internal=False,
        passive=False,
        arguments={"alternate-exchange": "ae"},
    ),
    DeleteExchange(rid=2, name="x", if_unused=True),
    DeclareQueue(
        rid=3, name="", durable=False, exclusive=True, auto_delete=True, passive=False, arguments={}
    ),
    DeleteQueue(rid=4, name="q", if_unused=False, if_empty=True),
    PurgeQueue(rid=5, name="q"),
    Bind(rid=6, destination="q", source="x", routing_key="a.*", arguments={}, to_exchange=False),
    Unbind(
        rid=7, destination="x2", source="x", routing_key="#", arguments={"k": "v"}, to_exchange=True
    ),
    Consume(
        rid=8,
        queue="q",
        consumer_tag="t",
        prefetch=10,
        auto_ack=False,
        exclusive=False,
        arguments={},
    ),
    Cancel(rid=9, consumer_tag="t"),
    Get(rid=10, queue="q", auto_ack=True),
    Redrive(rid=11, queue="dlq", exchange=None, limit=0),
    Redrive(rid=12, queue="dlq", exchange="retry", limit=10),
    Extend(delivery_tag=7, milliseconds=30_000),
    Publish(exchange="x", routing_key="a.b", body=b"\x00" * 300, properties=PROPS, mandatory=True),
    Publish(exchange="", routing_key="q", body=b"", properties=Properties(), mandatory=False),
    Ack(delivery_tag=3, multiple=True),
    Nack(delivery_tag=4, multiple=False, requeue=False),
    Heartbeat(),
]
SERVER_FRAMES = [
    Ok(rid=1, result={"queue": "q", "message_count": 0}),
    Error(rid=2, code="NOT_FOUND", text="no queue 'q'"),
    GetOk(
        rid=3,
        delivery_tag=1,
        redelivered=True,
        exchange="",
        routing_key="q",
        message_count=7,
        body=b"b",
        properties=PROPS,
    ),
    Deliver(
        consumer_tag="t",
        delivery_tag=2,
        redelivered=False,
        exchange="x",
        routing_key="k",
        body=b"body",
        properties=Properties(headers={"h": [1]}),
    ),
    Confirm(seq=9, multiple=True, ok=True, error_code=None, error_text=None),
    Confirm(seq=10, multiple=False, ok=False, error_code="NOT_FOUND", error_text="no exchange"),
    Return(
        seq=11,
        code="NO_ROUTE",
        reply_text="no queue matched",
        exchange="x",
        routing_key="k",
        body=b"",
        properties=Properties(),
    ),
    Cancelled(consumer_tag="t", reason="queue deleted"),
    TimedOut(consumer_tag="t", delivery_tag=8),
    Heartbeat(),
]


def open_pair(
    client: Connection | None = None, server: Connection | None = None, *, frame_size: int = 1 << 20
) -> tuple[Connection, Connection]:
    client = client or Connection(Role.CLIENT)
    server = server or Connection(Role.SERVER)
    server.receive_data(client.send(Hello(versions=[2], client="c", heartbeat_ms=0)))
    assert isinstance(server.next_event(), Hello)
    client.receive_data(
        server.send(
            Welcome(
                version=2,
                server="s",
                heartbeat_ms=0,
                max_frame_size=frame_size,
                connection_id="c1",
                max_message_size=server.max_message_size,
            )
        )
    )
    assert isinstance(client.next_event(), Welcome)
    assert client.state is server.state is State.OPEN
    return client, server


def drain(conn: Connection) -> list[object]:
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, PeerClosed):
            break
    return events


def test_every_client_frame_round_trips() -> None:
    client, server = open_pair()
    server.receive_data(send_all(client, CLIENT_FRAMES))
    assert drain(server) == CLIENT_FRAMES


def test_every_server_frame_round_trips() -> None:
    client, server = open_pair()
    client.receive_data(send_all(server, SERVER_FRAMES))
    assert drain(client) == SERVER_FRAMES


def test_input_split_at_every_byte() -> None:
    client, _ = open_pair()
    data = send_all(client, CLIENT_FRAMES)
    for cut in range(len(data) + 1):
        _, server = open_pair()
        got = []
        for part in (data[:cut], data[cut:]):
            if part:  # b"" would mean end of stream
                server.receive_data(part)
            got += drain(server)
        assert got == CLIENT_FRAMES, cut


def test_input_fed_one_byte_at_a_time() -> None:
    client, server = open_pair()
    got = []
    for byte in send_all(client, CLIENT_FRAMES):
        server.receive_data(bytes([byte]))
        got += drain(server)
    assert got == CLIENT_FRAMES


def test_end_of_stream() -> None:
    client, server = open_pair()
    server.receive_data(b"")
    assert server.next_event() == PeerClosed()
    _, server = open_pair()
    server.receive_data(client.send(Heartbeat())[:3])
    server.receive_data(b"")
    with pytest.raises(ProtocolError, match="middle of a frame"):
        server.next_event()


def frame(payload: object) -> bytes:
    data = cbor2.dumps(payload)
    return struct.pack(">I", len(data)) + data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x00\x02\xff\xff", "undecodable CBOR"),
        (frame({"not": "an array"}), "CBOR array"),
        (frame([]), "CBOR array"),
        (frame([999]), "unknown frame type 999"),
        (frame([42, 1]), "Ack frame has 1 fields; expected 2"),
        (frame([42, "1", False]), "'delivery_tag' must be a non-negative 63-bit integer"),
        (frame([42, -1, False]), "'delivery_tag' must be a non-negative 63-bit integer"),
        (frame([42, 1, 0]), "'multiple' must be a boolean"),
        (frame([40, "x", "k", "body-as-text", {}, False]), "'body' must be a byte string"),
        (frame([40, "x", "k", b"", {"colour": "red"}, False]), "unknown message property 'colour'"),
        (frame([40, "x", "k", b"", {"priority": 300}, False]), "priority"),
        (frame([40, "x", "k", b"", {"headers": {1: 2}}, False]), "map key"),
        (frame([40, "x", "k", b"", {"headers": {"t": cbor2.CBORTag(1, 0)}}, False]), "CBOR"),
        (
            frame([40, "x", "k", b"", {"headers": {"t": cbor2.CBORTag(9999, 0)}}, False]),
            "tables cannot carry",
        ),
        (frame([1, [2], "again", 0, 0]), "may not send a Hello frame in state open"),
        (frame([41, "t", 1, False, "x", "k", b"", {}]), "client may not send a Deliver frame"),
    ],
)
def test_bad_input_names_the_problem(data: bytes, message: str) -> None:
    _, server = open_pair()
    server.receive_data(data)
    with pytest.raises(ProtocolError, match=message):
        server.next_event()
    assert server.state is State.ERROR
    with pytest.raises(ProtocolError):
        server.next_event()


def test_before_the_handshake_a_frame_may_be_at_most_4_kib() -> None:
    server = Connection(Role.SERVER, max_frame_size=1 << 20)
    server.receive_data(struct.pack(">I", 4097))
    with pytest.raises(ProtocolError, match="exceeds the maximum frame size of 4096"):
        server.next_event()


def test_after_the_handshake_the_negotiated_size_bounds_a_frame() -> None:
    client, server = open_pair(frame_size=8192)
    assert client.max_frame_size == server.max_frame_size == 8192
    server.receive_data(struct.pack(">I", 8193))
    with pytest.raises(ProtocolError, match="exceeds the maximum frame size of 8192"):
        server.next_event()


@pytest.mark.parametrize(
    ("wish", "limit", "agreed"),
    [(0, 131072, 131072), (8192, 131072, 8192), (1 << 20, 131072, 131072), (10, 131072, 4096)],
)
def test_frame_size_negotiation(wish: int, limit: int, agreed: int) -> None:
    assert negotiate_frame_size(wish, limit) == agreed


def big_publish(size: int) -> Publish:
    return Publish(
        exchange="x",
        routing_key="k",
        body=bytes(range(256)) * (size // 256),
        properties=Properties(headers={"h": "v"}),
        mandatory=False,
    )


def test_a_frame_larger_than_the_frame_size_travels_as_fragments() -> None:
    client, server = open_pair(frame_size=4096)
    publish = big_publish(20_000)
    data = client.send(publish)
    assert len(data) > 4096 + 4
    server.receive_data(data + client.send(Heartbeat()))
    assert drain(server) == [publish, Heartbeat()]


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=12_000), max_size=6))
def test_fragments_split_anywhere_join_again(cuts: list[int]) -> None:
    client, _ = open_pair(frame_size=4096)
    publish = big_publish(10_000)
    data = client.send(publish) + client.send(Heartbeat())
    _, server = open_pair(frame_size=4096)
    got = []
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for start, end in itertools.pairwise(edges):
        server.receive_data(data[start:end])
        got += drain(server)
    assert got == [publish, Heartbeat()]


def test_a_too_large_publish_is_dropped_as_it_comes_and_reported() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER, max_message_size=10_000)
    open_pair(client, server, frame_size=4096)
    data = client.send(big_publish(300_000))
    server.receive_data(data[:200_000])
    assert drain(server) == []
    assert server._fragments_size == 0  # nothing of it is kept
    server.receive_data(data[200_000:] + client.send(Heartbeat()))
    [too_large, heartbeat] = drain(server)
    assert isinstance(too_large, PublishTooLarge) and too_large.size > 299_000
    assert heartbeat == Heartbeat()


def test_any_other_too_large_frame_is_a_protocol_error() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER, max_message_size=1000)
    open_pair(client, server, frame_size=4096)
    declare = DeclareQueue(
        rid=1,
        name="q",
        durable=False,
        exclusive=False,
        auto_delete=False,
        passive=False,
        arguments={"x-big": "x" * 200_000},
    )
    server.receive_data(client.send(declare))
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        drain(server)


def test_fragments_are_not_allowed_before_the_handshake() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(struct.pack(">I", 0x8000_0010) + b"x" * 16)
    with pytest.raises(ProtocolError, match="before the handshake"):
        server.next_event()


def test_nothing_but_hello_before_the_handshake() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    with pytest.raises(ProtocolError, match="may not send a Publish"):
        client.send(
            Publish(
                exchange="", routing_key="q", body=b"", properties=Properties(), mandatory=False
            )
        )
    server.receive_data(frame([42, 1, False]))
    with pytest.raises(ProtocolError, match="may not send a Ack frame in state await-hello"):
        server.next_event()


def test_close_is_allowed_anytime_and_ends_sending() -> None:
    client, server = open_pair()
    server.receive_data(client.send(Close(code=None, text="bye")))
    assert server.next_event() == Close(code=None, text="bye")
    with pytest.raises(ProtocolError, match="after Close"):
        client.send(Heartbeat())


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_protocol_error(data: bytes) -> None:
    _, server = open_pair()
    server.receive_data(data)
    try:
        drain(server)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=False),
            st.text(),
            st.binary(),
        ),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
        ),
        max_leaves=12,
    ).flatmap(lambda tail: st.tuples(st.integers(0, 50), st.just(tail)))
)
def test_random_well_formed_cbor_only_raises_protocol_error(item: tuple[int, object]) -> None:
    frame_type, tail = item
    _, server = open_pair()
    server.receive_data(
        frame([frame_type, *tail] if isinstance(tail, list) else [frame_type, tail])
    )
    try:
        drain(server)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    headers=st.dictionaries(
        st.text(max_size=5),
        st.recursive(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-(2**63), 2**63 - 1),
                st.floats(allow_nan=False),
                st.text(max_size=5),
                st.binary(max_size=5),
            ),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=3), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=4,
    ),
    body=st.binary(max_size=64),
    key=st.text(max_size=20),
)
def test_publish_round_trips_any_headers(headers: dict[str, object], body: bytes, key: str) -> None:
    client, server = open_pair()
    event = Publish(
        exchange="x",
        routing_key=key,
        body=body,
        properties=Properties(headers=headers),
        mandatory=False,
    )
    server.receive_data(client.send(event))
    assert server.next_event() == event


# Every frame type, with random valid field values, survives encode → split → decode.

_TABLE_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=8),
        st.binary(max_size=8),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_FIELD = {
    "int": st.integers(0, 2**63 - 1),
    "bool": st.booleans(),
    "str": st.text(max_size=20),
    "str | None": st.none() | st.text(max_size=20),
    "bytes": st.binary(max_size=64),
    "Table": st.dictionaries(st.text(max_size=6), _TABLE_VALUES, max_size=4),
    "list[int]": st.lists(st.integers(0, 100), max_size=4),
    "Properties": st.builds(
        Properties,
        content_type=st.none() | st.text(max_size=10),
        headers=st.none() | st.dictionaries(st.text(max_size=6), _TABLE_VALUES, max_size=3),
        persistent=st.booleans(),
        priority=st.none() | st.integers(0, 255),
        expiration=st.none() | st.integers(0, 10**9).map(str),
        message_id=st.none() | st.text(max_size=10),
        timestamp=st.none() | st.integers(0, 2**40),
    ),
}


def _frames(sender: Role) -> st.SearchStrategy[Frame]:
    kinds = [
        cls
        for cls in FRAME_TYPES.values()
        if sender in cls.sender
        and cls not in (Hello, Welcome, Close)  # handshake and Close have tests of their own
    ]
    return st.one_of(
        [st.builds(cls, **{f.name: _FIELD[f.type] for f in attrs.fields(cls)}) for cls in kinds]
    )


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(_frames(Role.CLIENT), min_size=1, max_size=5), cut=st.integers(0, 10**6))
def test_any_client_frames_round_trip_split_anywhere(frames: list[Frame], cut: int) -> None:
    client, server = open_pair()
    data = send_all(client, frames)
    cut %= len(data) + 1
    got = []
    for part in (data[:cut], data[cut:]):
        if part:
            server.receive_data(part)
        got += drain(server)
    assert got == frames


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(_frames(Role.SERVER), min_size=1, max_size=5))
def test_any_server_frames_round_trip(frames: list[Frame]) -> None:
    client, server = open_pair()
    client.receive_data(send_all(server, frames))
    assert drain(client) == frames


@given(
    deliver=st.builds(Deliver, **{f.name: _FIELD[f.type] for f in attrs.fields(Deliver)}),
)
def test_the_hot_path_deliver_encoder_matches_the_generic_one(deliver: Deliver) -> None:
    tail = encode_deliver_tail(
        deliver.exchange, deliver.routing_key, deliver.body, deliver.properties
    )
    fast = encode_deliver(deliver.consumer_tag, deliver.delivery_tag, deliver.redelivered, tail)
    assert fast == encode(deliver)
    assert decode_payload(fast[4:]) == deliver


def test_repeated_properties_decode_to_one_shared_object() -> None:
    client, server = open_pair()
    props = Properties(persistent=True, content_type="text/plain")
    event = Publish(exchange="", routing_key="q", body=b"", properties=props, mandatory=False)
    server.receive_data(client.send(event) + client.send(event))
    first, second = server.next_event(), server.next_event()
    assert first.properties == props and first.properties is second.properties


@given(
    publish=st.builds(Publish, **{f.name: _FIELD[f.type] for f in attrs.fields(Publish)}),
)
def test_the_hot_path_publish_encoder_matches_the_generic_one(publish: Publish) -> None:
    fast = encode_publish(
        publish.exchange,
        publish.routing_key,
        publish.body,
        publish.properties,
        publish.mandatory,
    )
    assert fast == encode(publish)
    assert decode_payload(fast[4:]) == publish
