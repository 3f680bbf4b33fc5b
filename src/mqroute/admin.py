"""What the admin requests answer: listings of the broker's state, and its status.

Rows are plain tables (CBOR-friendly) so the CLI can print them or emit them as JSON.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from . import __version__
from .broker import Broker
from .errors import InvalidArgument
from .session import ConsumerState

WHAT = ("queues", "exchanges", "bindings", "consumers", "connections", "status")


class ConnectionInfo(Protocol):
    id: str
    peer: str
    client_name: str
    opened_at: float


class Registry:
    """The server's live connections, start time, and per-queue rates."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.connections: dict[str, ConnectionInfo] = {}
        self.rates: dict[str, tuple[float, float]] = {}  # queue -> (publish/s, deliver/s)
        self._last: tuple[float, dict[str, tuple[int, int]]] | None = None

    def sample(self, broker: Broker, now: float) -> None:
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


def inspect(broker: Broker, registry: Registry, what: str) -> Any:
    if what not in WHAT:
        raise InvalidArgument(f"cannot list {what!r}; choose one of {', '.join(WHAT)}")
    return _LISTERS[what](broker, registry)


def _queues(broker: Broker, registry: Registry) -> list[dict[str, Any]]:
    return [
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
        for q in sorted(broker.queues.values(), key=lambda q: q.name)
    ]


def _exchanges(broker: Broker, registry: Registry) -> list[dict[str, Any]]:
    return [
        {
            "name": x.name,
            "type": x.spec.type,
            "durable": x.spec.durable,
            "auto_delete": x.spec.auto_delete,
            "internal": x.spec.internal,
            "bindings": x.binding_count,
            "arguments": x.spec.arguments,
        }
        for x in sorted(broker.exchanges.values(), key=lambda x: x.name)
    ]


def _bindings(broker: Broker, registry: Registry) -> list[dict[str, Any]]:
    rows = [
        {
            "source": b.source,
            "destination": b.destination,
            "kind": b.destination_kind,
            "routing_key": b.routing_key,
            "arguments": b.arguments,
        }
        for b in broker.bindings()
    ]
    return sorted(rows, key=lambda r: (r["source"], r["kind"], r["destination"], r["routing_key"]))


def _consumers(broker: Broker, registry: Registry) -> list[dict[str, Any]]:
    rows = []
    for queue in sorted(broker.queues.values(), key=lambda q: q.name):
        for consumer in queue.consumers.values():
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
                    "active": queue.active_tag in (None, consumer.tag),
                }
            )
    return rows


def _connections(broker: Broker, registry: Registry) -> list[dict[str, Any]]:
    owners: dict[str, list[Any]] = {}
    for session in broker.sessions.values():
        owners.setdefault(session.owner, []).append(session)
    rows = []
    for conn in sorted(registry.connections.values(), key=lambda c: c.opened_at):
        sessions = owners.get(conn.id, [])
        rows.append(
            {
                "id": conn.id,
                "peer": conn.peer,
                "client": conn.client_name,
                "opened": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(conn.opened_at)),
                "consumers": sum(len(s.consumers) for s in sessions),
                "unacked": sum(len(s.unacked) for s in sessions),
            }
        )
    return rows


def _status(broker: Broker, registry: Registry) -> dict[str, Any]:
    stats = broker.stats()
    return {
        "version": __version__,
        "uptime_seconds": round(time.time() - registry.started_at, 1),
        "memory_mb": _rss_mb(),
        "connections": len(registry.connections),
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


_LISTERS = {
    "queues": _queues,
    "exchanges": _exchanges,
    "bindings": _bindings,
    "consumers": _consumers,
    "connections": _connections,
    "status": _status,
}
