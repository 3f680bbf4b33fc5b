"""The shop's exchange and queues, declared by every service (declaring is idempotent)."""

from __future__ import annotations

import mqroute


async def declare(conn: mqroute.Connection) -> None:
    await conn.declare_exchange("shop", "topic", durable=True)
    await conn.declare_queue("inventory", durable=True)
    await conn.bind_queue("inventory", "shop", "order.created")
    await conn.declare_queue("notifications", durable=True)
    await conn.bind_queue("notifications", "shop", "order.*")
