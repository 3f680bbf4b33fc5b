"""Exchanges, queues and bindings from the shell: ``declare``, ``bind``, ``unbind``,
``delete`` and ``purge``."""

from __future__ import annotations

from collections.abc import Callable

import click

from ..client.connection import Connection
from ..errors import NotFound
from .main import URL_OPTION, ask, main
from .values import parse_header, table_option


@main.group()
def declare() -> None:
    """Declare exchanges and queues (idempotent; a mismatch is an error)."""


@declare.command("exchange")
@click.argument("name")
@click.option(
    "--type",
    "kind",
    default="direct",
    show_default=True,
    type=click.Choice(["direct", "fanout", "topic", "headers"]),
)
@click.option("--durable", is_flag=True, help="Keep it across broker restarts.")
@click.option("--auto-delete", is_flag=True, help="Delete it when its last binding goes.")
@click.option("--internal", is_flag=True, help="Only other exchanges may publish to it.")
@table_option("--argument", "An exchange argument, e.g. alternate-exchange=unrouted.")
@URL_OPTION
def declare_exchange(
    name: str,
    kind: str,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    table: tuple[str, ...],
    url: str,
) -> None:
    """Declare exchange NAME."""
    arguments = dict(parse_header(a) for a in table)
    ask(
        url,
        "mqroute declare",
        lambda conn: conn.declare_exchange(
            name,
            kind,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
        ),
    )
    click.echo(f"exchange {name!r} ({kind}) declared")


@declare.command("queue")
@click.argument("name", default="")
@click.option(
    "--durable", is_flag=True, help="Keep it (and its persistent messages) across restarts."
)
@click.option("--auto-delete", is_flag=True, help="Delete it when its last consumer goes.")
@table_option(
    "--argument",
    "A queue argument, e.g. x-max-length=1000 or "
    "x-dead-letter-exchange=dlx (integers and true/false are typed).",
)
@URL_OPTION
def declare_queue(
    name: str, durable: bool, auto_delete: bool, table: tuple[str, ...], url: str
) -> None:
    """Declare queue NAME (empty: the broker names it)."""
    arguments = dict(parse_header(a) for a in table)
    info = ask(
        url,
        "mqroute declare",
        lambda conn: conn.declare_queue(
            name, durable=durable, auto_delete=auto_delete, arguments=arguments
        ),
    )
    click.echo(
        f"queue {info.name!r} declared: {info.message_count} messages, "
        f"{info.consumer_count} consumers"
    )


async def _swapped(conn: Connection, source: str, destination: str) -> bool:
    """A queue named like the exchange argument and an exchange named like the queue one."""
    try:
        await conn.declare_exchange(destination, passive=True)
        await conn.declare_queue(source, passive=True)
    except NotFound:
        return False
    return True


def _binding_command(bind: bool) -> Callable[..., None]:
    verb = "bind" if bind else "unbind"

    @click.argument("source")
    @click.argument("destination")
    @click.argument("routing_key", default="")
    @click.option(
        "--to-exchange",
        is_flag=True,
        help="DESTINATION is an exchange (exchange-to-exchange binding).",
    )
    @table_option("--argument", "A binding argument (headers exchanges: x-match=any, …).")
    @URL_OPTION
    def command(
        source: str,
        destination: str,
        routing_key: str,
        to_exchange: bool,
        table: tuple[str, ...],
        url: str,
    ) -> None:
        arguments = dict(parse_header(a) for a in table)

        async def request(conn: Connection) -> None:
            try:
                await send(conn)
            except NotFound:
                if not to_exchange and await _swapped(conn, source, destination):
                    raise click.ClickException(
                        f"no queue {destination!r}, but there is an exchange of that name and "
                        f"a queue {source!r}: mqroute {verb} takes the exchange first; try "
                        f"mqroute {verb} {destination} {source} {routing_key}".rstrip()
                    ) from None
                raise

        async def send(conn: Connection) -> None:
            if to_exchange and bind:
                await conn.bind_exchange(destination, source, routing_key, arguments)
            elif to_exchange:
                await conn.unbind_exchange(destination, source, routing_key, arguments)
            elif bind:
                await conn.bind_queue(destination, source, routing_key, arguments)
            else:
                await conn.unbind_queue(destination, source, routing_key, arguments)

        ask(url, f"mqroute {verb}", request)
        kind = "exchange" if to_exchange else "queue"
        click.echo(f"{verb}: {source!r} --[{routing_key}]--> {kind} {destination!r}")

    command.__doc__ = (
        f"{verb.capitalize()} DESTINATION (a queue, or an exchange with "
        f"--to-exchange) {'to' if bind else 'from'} exchange SOURCE."
    )
    return command


main.command("bind")(_binding_command(bind=True))
main.command("unbind")(_binding_command(bind=False))


@main.command()
@click.argument("kind", type=click.Choice(["exchange", "queue"]))
@click.argument("name")
@click.option("--if-unused", is_flag=True, help="Only if it has no consumers (queue) or bindings.")
@click.option("--if-empty", is_flag=True, help="Queues: only if it holds no messages.")
@URL_OPTION
def delete(kind: str, name: str, if_unused: bool, if_empty: bool, url: str) -> None:
    """Delete an exchange or a queue."""
    if kind == "exchange":
        ask(url, "mqroute delete", lambda conn: conn.delete_exchange(name, if_unused=if_unused))
        click.echo(f"exchange {name!r} deleted")
        return
    count = ask(
        url,
        "mqroute delete",
        lambda conn: conn.delete_queue(name, if_unused=if_unused, if_empty=if_empty),
    )
    click.echo(f"queue {name!r} deleted with {count} messages")


@main.command()
@click.argument("queue")
@URL_OPTION
def purge(queue: str, url: str) -> None:
    """Drop the ready messages of QUEUE."""
    count = ask(url, "mqroute purge", lambda conn: conn.purge_queue(queue))
    click.echo(f"purged {count} messages from {queue!r}")
