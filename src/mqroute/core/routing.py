"""Exchange types: one small class per type behind one interface, registered by name.

The contract, as RabbitMQ's ``rabbit_exchange_type``:

- ``validate_binding(binding)`` raises before any state changes if the binding cannot exist;
- ``add_binding`` / ``remove_binding`` change the routing table (idempotent by ``Binding.key``);
- ``route(message)`` returns the bindings the message matches. It may return two bindings to
  the same destination; the caller deduplicates destinations.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from ..errors import PreconditionFailed
from ..model import Binding, Message, Table, same_value
from .topic_trie import TopicTrie

X_MATCH_VALUES = ("all", "any", "all-with-x", "any-with-x")


class ExchangeType:
    """Base of every exchange type. Subclasses hold the routing table for one exchange."""

    name: ClassVar[str]

    def validate_binding(self, binding: Binding) -> None:
        """Raise PreconditionFailed if ``binding`` is not valid for this type."""

    def add_binding(self, binding: Binding) -> None:
        raise NotImplementedError

    def remove_binding(self, binding: Binding) -> None:
        raise NotImplementedError

    def route(self, message: Message) -> Iterable[Binding]:
        raise NotImplementedError

    def bindings(self) -> Iterable[Binding]:
        raise NotImplementedError


class DirectExchange(ExchangeType):
    """Routes to bindings whose key equals the routing key exactly."""

    name = "direct"

    def __init__(self) -> None:
        self._by_key: dict[str, dict[tuple[Any, ...], Binding]] = {}

    def add_binding(self, binding: Binding) -> None:
        self._by_key.setdefault(binding.routing_key, {})[binding.key] = binding

    def remove_binding(self, binding: Binding) -> None:
        group = self._by_key.get(binding.routing_key)
        if group is not None:
            group.pop(binding.key, None)
            if not group:
                del self._by_key[binding.routing_key]

    def route(self, message: Message) -> Iterable[Binding]:
        group = self._by_key.get(message.routing_key)
        return group.values() if group else ()

    def bindings(self) -> Iterable[Binding]:
        for group in self._by_key.values():
            yield from group.values()


class FanoutExchange(ExchangeType):
    """Routes to every binding; keys are ignored."""

    name = "fanout"

    def __init__(self) -> None:
        self._all: dict[tuple[Any, ...], Binding] = {}

    def add_binding(self, binding: Binding) -> None:
        self._all[binding.key] = binding

    def remove_binding(self, binding: Binding) -> None:
        self._all.pop(binding.key, None)

    def route(self, message: Message) -> Iterable[Binding]:
        return self._all.values()

    def bindings(self) -> Iterable[Binding]:
        return self._all.values()


class TopicExchange(ExchangeType):
    """Routes by dotted patterns with ``*`` (one word) and ``#`` (zero or more words)."""

    name = "topic"

    def __init__(self) -> None:
        self._trie: TopicTrie[Binding] = TopicTrie()

    def add_binding(self, binding: Binding) -> None:
        self._trie.add(binding.routing_key, binding.key, binding)

    def remove_binding(self, binding: Binding) -> None:
        self._trie.remove(binding.routing_key, binding.key)

    def route(self, message: Message) -> Iterable[Binding]:
        return self._trie.match(message.routing_key)

    def bindings(self) -> Iterable[Binding]:
        return iter(self._trie)


class HeadersExchange(ExchangeType):
    """Routes by message headers against binding arguments; ``x-match`` says how.

    ``all``/``any`` compare only arguments not starting with ``x-``; the ``-with-x`` forms
    compare those too. Values must be equal in type and value. ``all`` with nothing to compare
    matches every message, ``any`` with nothing to compare matches none (as RabbitMQ).
    """

    name = "headers"

    def __init__(self) -> None:
        self._all: dict[tuple[Any, ...], tuple[Binding, bool, list[tuple[str, Any]]]] = {}

    def validate_binding(self, binding: Binding) -> None:
        mode = binding.arguments.get("x-match", "all")
        if mode not in X_MATCH_VALUES:
            raise PreconditionFailed(
                f"invalid x-match value {mode!r}; expected one of {', '.join(X_MATCH_VALUES)}"
            )

    def add_binding(self, binding: Binding) -> None:
        mode = binding.arguments.get("x-match", "all")
        with_x = mode.endswith("-with-x")
        wanted = [
            (k, v)
            for k, v in binding.arguments.items()
            if k != "x-match" and (with_x or not k.startswith("x-"))
        ]
        self._all[binding.key] = (binding, mode.startswith("all"), wanted)

    def remove_binding(self, binding: Binding) -> None:
        self._all.pop(binding.key, None)

    def route(self, message: Message) -> Iterable[Binding]:
        headers = message.properties.headers or {}
        return [
            b for b, match_all, wanted in self._all.values() if _matches(headers, match_all, wanted)
        ]

    def bindings(self) -> Iterable[Binding]:
        return (entry[0] for entry in self._all.values())


def _matches(headers: Table, match_all: bool, wanted: list[tuple[str, Any]]) -> bool:
    missing = object()
    hits = (same_value(headers.get(k, missing), v) for k, v in wanted)
    return all(hits) if match_all else any(hits)


EXCHANGE_TYPE_CLASSES: dict[str, type[ExchangeType]] = {
    cls.name: cls for cls in (DirectExchange, FanoutExchange, TopicExchange, HeadersExchange)
}
