"""What the admin requests answer: listings of the broker's state, and its status.

Rows are plain tables (CBOR-friendly) so the CLI can print them or emit them as JSON. Every
listing is paged: a request names an offset and at most PAGE_ROWS rows, and only the rows of
that page are built, so a broker with 100,000 queues answers in frames of a bounded size.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from .. import __version__
from ..core.session import ConsumerState
from ..core.vhost import Vhost
from ..errors import InvalidArgument

WHAT = ("queues", "exchanges", "bindings", "consumers", "connections", "status")
PAGE_ROWS = 500  # the most rows one answer holds


class ConnectionInfo(Protocol):
    id: str
    peer: str
    client_name: str
    user: str
    opened_at: float

    def pending_output(self) -> int: ...


class Registry:
    """The server's live connections, start time, and per-queue rates."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.connections: dict[str, ConnectionInfo] = {}
        self.rates: dict[str, tuple[float, float]] = {}  # queue -> (publish/s, deliver/s)
        self._last: tuple[float, dict[str, tuple[int, int]]] | None = None

    def sample(self, broker: Vhost, now: float) -> None:
        """Update rates from the counts since the previous sample (the server calls this
        every few seconds)."""
        counts = {q.name: (q.published, q.delivered) for q in broker.queues.values()}
        if self._last is not None:
            then, before = self._last
            elapsed = max(now - then, 1e-9)
            self.rates = {
                name: (
                    (pub - before.get(name, (0, 0))[0]) / elapsed,
                    (dlv - before.get(name, (0, 0))[1]) / elapsed,
                )
                for name, (pub, dlv) in counts.items()
            }
        self._last = (now, counts)


def inspect(
    broker: Vhost, registry: Registry, what: str, offset: int = 0, limit: int = PAGE_ROWS
) -> tuple[Any, int]:
    """One page of a listing (or the status table) and how many rows the listing has."""
    if what not in WHAT:
        raise InvalidArgument(f"cannot list {what!r}; choose one of {', '.join(WHAT)}")
    if what == "status":
        return _status(broker, registry), 1
    page = slice(offset, offset + max(0, min(limit, PAGE_ROWS)))
    rows, total = _LISTERS[what](broker, registry, page)
    return rows, total


def _queues(broker: Vhost, registry: Registry, page: slice) -> tuple[list[Any], int]:
    queues = sorted(broker.queues.values(), key=lambda q: q.name)
    rows = [
        {
            "name": q.name,
            "durable": q.spec.durable,
            "exclusive": q.spec.exclusive,
            "auto_delete": q.spec.auto_delete,
            "ready": len(q),
            "unacked": q.unacked,
            "delayed": q.delayed,
            "consumers": len(q.consumers),
            "publish_rate": round(registry.rates.get(q.name, (0.0, 0.0))[0], 1),
            "deliver_rate": round(registry.rates.get(q.name, (0.0, 0.0))[1], 1),
            "arguments": q.spec.arguments,
        }
        for q in queues[page]
    ]
    return rows, len(queues)


def _exchanges(broker: Vhost, registry: Registry, page: slice) -> tuple[list[Any], int]:
    exchanges = sorted(broker.exchanges.values(), key=lambda x: x.name)
    rows = [
        {
            "name": x.name,
            "type": x.spec.type,
            "durable": x.spec.durable,
            "auto_delete": x.spec.auto_delete,
            "internal": x.spec.internal,
            "bindings": x.binding_count,
            "arguments": x.spec.arguments,
        }
        for x in exchanges[page]
    ]
    return rows, len(exchanges)


def _bindings(broker: Vhost, registry: Registry, page: slice) -> tuple[list[Any], int]:
    bindings = sorted(
        broker.bindings(),
        key=lambda b: (b.source, b.destination_kind, b.destination, b.routing_key),
    )
    rows = [
        {
            "source": b.source,
            "destination": b.destination,
            "kind": b.destination_kind,
            "routing_key": b.routing_key,
            "arguments": b.arguments,
        }
        for b in bindings[page]
    ]
    return rows, len(bindings)


def _consumers(broker: Vhost, registry: Registry, page: slice) -> tuple[list[Any], int]:
    consumers = [
        (queue, consumer)
        for queue in sorted(broker.queues.values(), key=lambda q: q.name)
        for consumer in queue.consumers.values()
    ]
    rows = []
    for queue, consumer in consumers[page]:
        assert isinstance(consumer, ConsumerState)
        rows.append(
            {
                "queue": queue.name,
                "consumer_tag": consumer.tag,
                "connection": consumer.session.owner,
                "prefetch": consumer.prefetch,
                "unacked": consumer.unacked,
                "auto_ack": consumer.auto_ack,
                "priority": consumer.priority,
                "active": queue.active in (None, consumer),
            }
        )
    return rows, len(consumers)


def _connections(broker: Vhost, registry: Registry, page: slice) -> tuple[list[Any], int]:
    owners: dict[str, list[Any]] = {}
    for session in broker.sessions.values():
        owners.setdefault(session.owner, []).append(session)
    connections = sorted(registry.connections.values(), key=lambda c: c.opened_at)
    rows = []
    for conn in connections[page]:
        sessions = owners.get(conn.id, [])
        rows.append(
            {
                "id": conn.id,
                "peer": conn.peer,
                "client": conn.client_name,
                "user": conn.user,
                "opened": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(conn.opened_at)),
                "consumers": sum(len(s.consumers) for s in sessions),
                "unacked": sum(len(s.unacked) for s in sessions),
                # RabbitMQ's send_pend: bytes (and a cost per frame) waiting to be written.
                "send_pend": conn.pending_output(),
            }
        )
    return rows, len(connections)


def _status(broker: Vhost, registry: Registry) -> dict[str, Any]:
    stats = broker.stats()
    return {
        "version": __version__,
        "uptime_seconds": round(time.time() - registry.started_at, 1),
        "memory_mb": _rss_mb(),
        "queued_messages_mb": round(broker.ledger.used / 2**20, 1),
        "memory_alarm": broker.flow.memory_alarm,
        "disk_alarm": broker.flow.disk_alarm,
        "connections": len(registry.connections),
        "channels": stats.sessions,
        "exchanges": stats.exchanges,
        "queues": stats.queues,
        "bindings": stats.bindings,
        "consumers": stats.consumers,
        "messages_ready": stats.ready,
        "messages_unacked": stats.unacked,
        "published": stats.published,
        "delivered": stats.delivered,
        "acked": stats.acked,
    }


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


_LISTERS: dict[str, Any] = {
    "queues": _queues,
    "exchanges": _exchanges,
    "bindings": _bindings,
    "consumers": _consumers,
    "connections": _connections,
}
