"""What an operator asks a running broker: ``list``, ``status``, ``route explain`` and
``redrive``."""

from __future__ import annotations

import json

import click

from .main import URL_OPTION, ask, main
from .values import parse_header


@main.command()
@click.argument("queue")
@click.option(
    "--to-exchange",
    default=None,
    help="Publish the messages to this exchange (with their routing keys) instead of "
    "sending each back to the queue it last died in.",
)
@click.option(
    "--limit",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Move at most this many (0 = all).",
)
@URL_OPTION
def redrive(queue: str, to_exchange: str | None, limit: int, url: str) -> None:
    """Move messages out of dead-letter queue QUEUE.

    Each goes back to the queue it last died in (its x-last-death-queue header), or to
    --to-exchange. Messages with nowhere to go stay in QUEUE.
    """
    moved = ask(
        url,
        "mqroute redrive",
        lambda conn: conn.redrive(queue, to_exchange=to_exchange, limit=limit or None),
    )
    click.echo(f"moved {moved} message{'s' if moved != 1 else ''} out of {queue!r}")


@main.group()
def route() -> None:
    """Understand routing."""


@route.command("explain")
@click.argument("exchange")
@click.argument("routing_key")
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="NAME=VALUE",
    help="A message header (for headers exchanges); repeat for more. Integers and "
    "true/false are typed.",
)
@URL_OPTION
def route_explain(exchange: str, routing_key: str, headers: tuple[str, ...], url: str) -> None:
    """Show where a message published to EXCHANGE with ROUTING_KEY would go.

    A dry run: every binding that matches, exchange by exchange, and the queues that would
    receive it. Nothing is published. Use "" for the default exchange.
    """
    table = dict(parse_header(h) for h in headers)
    result = ask(
        url, "mqroute route explain", lambda conn: conn.explain_route(exchange, routing_key, table)
    )
    click.echo(
        f"exchange {exchange!r}, routing key {routing_key!r}"
        + (f", headers {table}" if table else "")
    )
    for step in result["steps"]:
        key = step["routing_key"]
        args = f" {step['arguments']}" if step["arguments"] else ""
        click.echo(
            f"  {step['exchange'] or '(default)'} ({step['type']}) "
            f"--[{key}{args}]--> {step['destination_kind']} {step['destination']}"
        )
    queues = result["queues"]
    if queues:
        click.echo(f"=> {len(queues)} queue{'s' if len(queues) != 1 else ''}: {', '.join(queues)}")
    else:
        click.echo("=> no queue: the message would be dropped (or returned, if mandatory)")


COLUMNS = {
    "queues": [
        "name",
        "ready",
        "unacked",
        "delayed",
        "consumers",
        "publish_rate",
        "deliver_rate",
        "durable",
        "arguments",
    ],
    "exchanges": ["name", "type", "durable", "bindings", "arguments"],
    "bindings": ["source", "kind", "destination", "routing_key", "arguments"],
    "consumers": ["queue", "consumer_tag", "connection", "prefetch", "unacked", "active"],
    "connections": ["id", "peer", "client", "user", "opened", "consumers", "unacked", "send_pend"],
}


LABELS = {"publish_rate": "publish/s", "deliver_rate": "deliver/s"}  # column headings


@main.command("list")
@click.argument("what", type=click.Choice(list(COLUMNS)))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@URL_OPTION
def list_(what: str, as_json: bool, url: str) -> None:
    """List queues, exchanges, bindings, consumers or connections."""
    rows = ask(url, f"mqroute list {what}", lambda conn: conn.inspect(what))
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=repr))
        return
    click.echo(_table(rows, COLUMNS[what]))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="As one JSON object.")
@URL_OPTION
def status(as_json: bool, url: str) -> None:
    """Version, uptime, memory, connections, queues and message counts."""
    info = ask(url, "mqroute status", lambda conn: conn.inspect("status"))
    if as_json:
        click.echo(json.dumps(info))
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        click.echo(f"{key.replace('_', ' '):<{width}}  {value}")


def _table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """Aligned columns; numbers right-aligned; empty tables say so."""
    if not rows:
        return "(none)"

    def cell(value: object) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        return "" if value is None else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    labels = [LABELS.get(c, c) for c in columns]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(labels)]
    numeric = [all(type(row.get(c)) in (int, float) for row in rows) for c in columns]
    lines = [
        "  ".join(
            c.ljust(w) if not n else c.rjust(w)
            for c, w, n in zip(labels, widths, numeric, strict=True)
        )
    ]
    for r in cells:
        lines.append(
            "  ".join(
                v.rjust(w) if n else v.ljust(w) for v, w, n in zip(r, widths, numeric, strict=True)
            ).rstrip()
        )
    return "\n".join(lines)
