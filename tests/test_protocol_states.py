"""The protocol's transition table, its closing states, local against remote errors, the
handshake's negotiation and the typed replies, all without a socket (ConnectionPair)."""

from __future__ import annotations

import attrs
import pytest

from mqroute.errors import LocalProtocolError, RemoteProtocolError
from mqroute.model import Properties
from mqroute.protocol import (
    SUPPORTED_VERSIONS,
    TRANSITIONS,
    Ack,
    Close,
    ConnectionPair,
    DeclareQueue,
    DeclareQueueOk,
    Deliver,
    Done,
    Get,
    GetEmpty,
    Heartbeat,
    Hello,
    Ok,
    Publish,
    Role,
    State,
    check_welcome,
    encode,
    hello_for,
    negotiate_heartbeat,
    ok_frame,
    read_reply,
    welcome_for,
)


def publish() -> Publish:
    return Publish(
        exchange="", routing_key="q", body=b"x", properties=Properties(), mandatory=False
    )


def deliver() -> Deliver:
    return Deliver(
        consumer_tag="c",
        delivery_tag=1,
        redelivered=False,
        exchange="",
        routing_key="q",
        body=b"x",
        properties=Properties(),
    )


def test_every_state_but_error_lets_both_sides_close() -> None:
    for state in State:
        for role in Role:
            assert Close in TRANSITIONS[(state, role)], (state, role)


def test_after_the_client_closes_the_server_may_still_deliver_until_its_own_close() -> None:
    pair = ConnectionPair()
    pair.open()
    assert pair.to_server(Close(code=None, text="bye")) == [Close(code=None, text="bye")]
    assert pair.client.state is pair.server.state is State.CLIENT_CLOSED
    assert pair.to_client(deliver()) == [deliver()]  # in flight before it heard the Close
    pair.to_client(Close(code=None, text="closed by client"))
    assert pair.client.state is pair.server.state is State.CLOSED


def test_sending_after_ones_own_close_is_a_local_error_and_changes_nothing() -> None:
    pair = ConnectionPair()
    pair.open()
    pair.to_server(Close(code=None, text="bye"))
    with pytest.raises(LocalProtocolError, match="Publish frame after Close"):
        pair.client.send(publish())
    with pytest.raises(LocalProtocolError, match="Publish frame now"):
        pair.client.send_publish("", "q", b"x", Properties(), False)
    assert pair.client.state is State.CLIENT_CLOSED


def test_a_frame_the_peer_may_not_send_is_a_remote_error_and_the_error_state() -> None:
    pair = ConnectionPair()
    pair.open()
    pair.server.receive_data(encode(deliver()))  # only a server may send a Deliver
    with pytest.raises(RemoteProtocolError, match="client may not send a Deliver frame"):
        pair.server.next_event()
    assert pair.server.state is State.ERROR
    pair.server.send(Close(code="FRAME_ERROR", text="why"))  # it may still say why
    with pytest.raises(LocalProtocolError):
        pair.server.send(Heartbeat())


def test_a_second_hello_is_a_remote_error() -> None:
    pair = ConnectionPair()
    pair.open()
    pair.server.receive_data(encode(hello_for("again", 0)))
    with pytest.raises(RemoteProtocolError, match="Hello frame in state open"):
        pair.server.next_event()


def test_hot_path_senders_follow_the_table() -> None:
    pair = ConnectionPair()
    with pytest.raises(LocalProtocolError):
        pair.server.send_deliver("c", 1, False, b"")
    pair.open()
    assert pair.to_server(Ack(delivery_tag=1, multiple=False)) == [
        Ack(delivery_tag=1, multiple=False)
    ]
    with pytest.raises(LocalProtocolError, match="client may not send a Deliver"):
        pair.client.send_deliver("c", 1, False, b"")


def test_the_handshake_picks_the_highest_common_version_and_the_smaller_heartbeat() -> None:
    hello = Hello(versions=[1, 2], client="old", heartbeat_ms=30_000)
    welcome = welcome_for(
        hello,
        server="s",
        connection_id="c",
        heartbeat_ms=60_000,
        max_frame_size=1 << 20,
        max_message_size=1 << 24,
    )
    assert welcome.version == 2 and welcome.heartbeat_ms == 30_000
    assert negotiate_heartbeat(0, 60_000) == 60_000 and negotiate_heartbeat(0, 0) == 0


def test_no_common_version_is_refused_with_both_lists() -> None:
    with pytest.raises(RemoteProtocolError, match=r"client offers \[9\], server speaks"):
        welcome_for(
            Hello(versions=[9], client="future", heartbeat_ms=0),
            server="s",
            connection_id="c",
            heartbeat_ms=0,
            max_frame_size=4096,
            max_message_size=4096,
        )


def test_a_client_refuses_a_version_it_did_not_offer() -> None:
    welcome = ConnectionPair().open()
    assert welcome.version in SUPPORTED_VERSIONS
    check_welcome(welcome)
    with pytest.raises(RemoteProtocolError, match="version 99"):
        check_welcome(attrs.evolve(welcome, version=99))


def test_typed_replies_round_trip_through_ok() -> None:
    reply = DeclareQueueOk(
        queue="q", message_count=3, consumer_count=1, arguments={"x": 1}, delayed_count=0
    )
    pair = ConnectionPair()
    pair.open()
    (ok,) = pair.to_client(ok_frame(7, reply))
    assert isinstance(ok, Ok) and ok.rid == 7
    assert read_reply(DeclareQueue, ok) == reply
    assert read_reply(Get, Ok(rid=1, result={})) == GetEmpty()
    assert ok_frame(1, Done()).result == {}


def test_a_reply_missing_a_field_or_of_the_wrong_type_is_the_peers_error() -> None:
    with pytest.raises(RemoteProtocolError, match="DeclareQueue has no valid 'queue'"):
        read_reply(DeclareQueue, Ok(rid=1, result={"message_count": 0, "consumer_count": 0}))
    with pytest.raises(RemoteProtocolError, match="'message_count': True"):
        read_reply(
            DeclareQueue,
            Ok(rid=1, result={"queue": "q", "message_count": True, "consumer_count": 0}),
        )
