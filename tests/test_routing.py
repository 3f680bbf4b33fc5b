"""Exchange types in isolation: direct, fanout, headers (topic has its own file)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqroute.core.routing import DirectExchange, FanoutExchange, HeadersExchange, TopicExchange
from mqroute.errors import PreconditionFailed
from mqroute.model import Binding, Message, Properties


def binding(dest: str, key: str = "", **arguments: Any) -> Binding:
    return Binding(
        source="x", destination=dest, destination_kind="queue", routing_key=key, arguments=arguments
    )


def message(key: str = "", headers: dict[str, Any] | None = None) -> Message:
    return Message(exchange="x", routing_key=key, body=b"", properties=Properties(headers=headers))


def routed(exchange: Any, msg: Message) -> list[str]:
    return sorted(b.destination for b in exchange.route(msg))


def test_direct_matches_the_exact_key_only() -> None:
    x = DirectExchange()
    x.add_binding(binding("q1", "a"))
    x.add_binding(binding("q2", "a.b"))
    assert routed(x, message("a")) == ["q1"]
    assert routed(x, message("A")) == []
    x.remove_binding(binding("q1", "a"))
    assert routed(x, message("a")) == []


def test_fanout_ignores_the_key() -> None:
    x = FanoutExchange()
    x.add_binding(binding("q1", "a"))
    x.add_binding(binding("q2"))
    assert routed(x, message("zzz")) == ["q1", "q2"]


def test_binding_twice_is_one_binding() -> None:
    x = TopicExchange()
    x.add_binding(binding("q", "a.*"))
    x.add_binding(binding("q", "a.*"))
    assert routed(x, message("a.b")) == ["q"]
    assert len(list(x.bindings())) == 1


HEADER_CASES = [
    # binding arguments, message headers, matches
    ({}, {}, True),  # all with nothing to compare matches everything
    ({"x-match": "any"}, {"a": 1}, False),  # any with nothing to compare matches nothing
    ({"a": 1}, {"a": 1}, True),
    ({"a": 1}, {"a": 1, "b": 2}, True),
    ({"a": 1, "b": 2}, {"a": 1}, False),
    ({"x-match": "any", "a": 1, "b": 2}, {"a": 1}, True),
    ({"x-match": "any", "a": 1, "b": 2}, {"c": 1}, False),
    ({"a": 1}, {"a": True}, False),  # values compare by type: True is not 1
    ({"a": True}, {"a": 1}, False),
    ({"a": 1}, {"a": 1.0}, False),
    ({"a": "1"}, {"a": 1}, False),
    ({"a": [1, 2]}, {"a": [1, 2]}, True),
    ({"a": {"b": 1}}, {"a": {"b": 1}}, True),
    ({"a": None}, {"a": None}, True),
    ({"a": None}, {}, False),
    ({"x-foo": 1}, {}, True),  # all ignores x- arguments
    ({"x-foo": 1, "a": 1}, {"a": 1}, True),
    ({"x-match": "all-with-x", "x-foo": 1}, {}, False),
    ({"x-match": "all-with-x", "x-foo": 1}, {"x-foo": 1}, True),
    ({"x-match": "any", "x-foo": 1}, {"x-foo": 1}, False),  # any ignores x- arguments
    ({"x-match": "any-with-x", "x-foo": 1}, {"x-foo": 1}, True),
    ({"x-match": "any-with-x", "x-foo": 1, "a": 2}, {"a": 2}, True),
]


@pytest.mark.parametrize(("arguments", "headers", "expected"), HEADER_CASES)
def test_headers_matching(
    arguments: dict[str, Any], headers: dict[str, Any], expected: bool
) -> None:
    x = HeadersExchange()
    b = binding("q", **arguments)
    x.validate_binding(b)
    x.add_binding(b)
    assert (routed(x, message(headers=headers)) == ["q"]) is expected


def test_headers_ignore_the_routing_key() -> None:
    x = HeadersExchange()
    x.add_binding(binding("q", "some-key", a=1))
    assert routed(x, message("other", {"a": 1})) == ["q"]


def test_message_without_headers_is_empty_headers() -> None:
    x = HeadersExchange()
    x.add_binding(binding("q"))
    assert routed(x, message()) == ["q"]


@pytest.mark.parametrize("bad", ["ALL", "none", 1, "", None])
def test_headers_rejects_unknown_x_match(bad: Any) -> None:
    with pytest.raises(PreconditionFailed, match="x-match"):
        HeadersExchange().validate_binding(binding("q", **{"x-match": bad}))


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from(["a", "1"]),
    st.floats(-2, 2).filter(lambda f: f == int(f)),
)


@given(
    args=st.dictionaries(st.sampled_from(["a", "b", "x-c"]), values, max_size=3),
    headers=st.dictionaries(st.sampled_from(["a", "b", "x-c"]), values, max_size=3),
    mode=st.sampled_from(["all", "any", "all-with-x", "any-with-x"]),
)
def test_headers_agree_with_reference(
    args: dict[str, Any], headers: dict[str, Any], mode: str
) -> None:
    x = HeadersExchange()
    x.add_binding(binding("q", **args, **{"x-match": mode}))
    compared = {k: v for k, v in args.items() if mode.endswith("with-x") or not k.startswith("x-")}
    hits = [
        k in headers and type(headers[k]) is type(v) and headers[k] == v
        for k, v in compared.items()
    ]
    expected = all(hits) if mode.startswith("all") else any(hits)
    assert (routed(x, message(headers=headers)) == ["q"]) is expected
