"""Dead-lettering's headers: RabbitMQ's x-death history, and what it says about cycles.

A dead-lettered message carries ``x-death``: one entry per (queue, reason), newest first, with
a count; ``x-first-death-*`` and ``x-last-death-*`` beside it. The broker reads it back to stop
an automatic cycle (a message expiring round a loop of queues for ever) and for redrive.
"""

from __future__ import annotations

from ..model import Message, Table


def death_headers(message: Message, queue: str, reason: str, now: float) -> Table:
    """The message's headers with its death in ``queue`` recorded as RabbitMQ writes it.

    ``x-death`` holds one entry per (queue, reason), most recent first, with a count; a
    repeated death keeps the entry's first exchange, routing keys and time (RabbitMQ 3.10+).
    ``x-first-death-*`` are set once, ``x-last-death-*`` every time.
    """
    headers = dict(message.properties.headers or {})
    deaths = _deaths(headers)
    previous = next(
        (d for d in deaths if d.get("queue") == queue and d.get("reason") == reason), None
    )
    entry: Table
    if previous is not None:  # the first death's details stay; only the count grows
        count = previous.get("count")
        entry = dict(previous)
        entry["count"] = count + 1 if type(count) is int and 0 <= count < 2**62 else 1
    else:
        entry = {
            "queue": queue,
            "reason": reason,
            "count": 1,
            "time": int(now),
            "exchange": message.exchange,
            "routing-keys": [message.routing_key],
        }
        if message.properties.expiration is not None:
            entry["original-expiration"] = message.properties.expiration
    headers["x-death"] = [entry] + [d for d in deaths if d is not previous]
    for key, value in (("queue", queue), ("reason", reason), ("exchange", message.exchange)):
        headers.setdefault(f"x-first-death-{key}", value)
        headers[f"x-last-death-{key}"] = value
    return headers


def _deaths(headers: Table) -> list[Table]:
    """The x-death entries the broker can read. A publisher may send anything under that
    name: a value that is not a list is ignored (and replaced), as RabbitMQ does, and so is
    any entry that is not a table."""
    deaths = headers.get("x-death")
    if type(deaths) is not list:
        return []
    return [d for d in deaths if type(d) is dict]


def queues_died_in(message: Message) -> set[str]:
    return {str(d.get("queue")) for d in _deaths(message.properties.headers or {})}


def rejected_before(message: Message) -> bool:
    return any(d.get("reason") == "rejected" for d in _deaths(message.properties.headers or {}))
