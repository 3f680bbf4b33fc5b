"""Where a message goes: from its exchange through bindings to the queues it reaches.

The exchange types (routing.py) each answer "which of my bindings match"; traversal follows
those answers across exchange-to-exchange bindings, falls back to alternate exchanges when
nothing matched, and reaches each queue once however many paths lead to it. With ``steps`` it
also says how, binding by binding, for ``mqroute route explain``.
"""

from __future__ import annotations

from typing import Literal

import attrs

from ..errors import AccessRefused, NotFound
from ..model import Binding, Message
from .queue import MessageQueue
from .topology import DEFAULT_EXCHANGE, Exchange, Topology, check_short_string


@attrs.frozen(kw_only=True)
class RouteStep:
    """One binding a message followed, for route explanations."""

    exchange: str
    exchange_type: str
    binding: Binding


@attrs.frozen(kw_only=True)
class RouteResult:
    queues: list[str]
    steps: list[RouteStep]


def route(
    topology: Topology,
    message: Message,
    steps: list[RouteStep] | None = None,
    *,
    from_client: bool = True,
) -> list[MessageQueue]:
    """Queues ``message`` reaches, each once. NOT_FOUND for a missing exchange; a client
    (``from_client``) may not publish to an internal one."""
    name = message.exchange
    if name == DEFAULT_EXCHANGE:
        queue = topology.queues.get(message.routing_key)
        if steps is not None and queue is not None:
            steps.append(_step("", "direct", queue.name, "queue", queue.name))
        return [queue] if queue is not None else []
    start = topology.exchanges.get(name)
    if start is None:
        check_short_string("exchange name", name)
        raise NotFound(f"no exchange {name!r}")
    if start.spec.internal and from_client:
        raise AccessRefused(f"cannot publish to internal exchange {name!r}")
    found = _follow(topology, start, message, steps)
    tried = {name}
    exchange = start
    # Unroutable: the exchange's alternate exchange gets it (and so on, once each).
    while not found:
        alternate = exchange.spec.arguments.get("alternate-exchange")
        if not isinstance(alternate, str) or alternate in tried:
            break
        tried.add(alternate)
        nxt = topology.exchanges.get(alternate)
        if nxt is None:
            break
        if steps is not None:
            steps.append(
                _step(
                    exchange.name,
                    exchange.spec.type,
                    alternate,
                    "exchange",
                    "(alternate-exchange)",
                )
            )
        exchange = nxt
        found = _follow(topology, exchange, message, steps)
    return list(found.values())


def explain(topology: Topology, message: Message) -> RouteResult:
    """Where ``message`` would go, binding by binding; nothing is published."""
    steps: list[RouteStep] = []
    queues = route(topology, message, steps)
    return RouteResult(queues=[q.name for q in queues], steps=steps)


def _follow(
    topology: Topology, start: Exchange, message: Message, steps: list[RouteStep] | None
) -> dict[str, MessageQueue]:
    """Queues reached from ``start`` through its bindings and exchange-to-exchange ones."""
    found: dict[str, MessageQueue] = {}
    seen = {start.name}
    todo = [start]
    while todo:
        exchange = todo.pop()
        for binding in exchange.router.route(message):
            if steps is not None:
                steps.append(
                    RouteStep(
                        exchange=exchange.name, exchange_type=exchange.spec.type, binding=binding
                    )
                )
            if binding.destination_kind == "queue":
                queue = topology.queues.get(binding.destination)
                if queue is not None:
                    found[queue.name] = queue
            elif binding.destination not in seen:
                seen.add(binding.destination)
                nxt = topology.exchanges.get(binding.destination)
                if nxt is not None:
                    todo.append(nxt)
    return found


def _step(
    exchange: str,
    kind: str,
    destination: str,
    dest_kind: Literal["queue", "exchange"],
    key: str,
) -> RouteStep:
    return RouteStep(
        exchange=exchange,
        exchange_type=kind,
        binding=Binding(
            source=exchange, destination=destination, destination_kind=dest_kind, routing_key=key
        ),
    )
