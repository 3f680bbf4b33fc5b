"""The `mqroute` click group and what its subcommands share: the --url option and `ask`."""

from __future__ import annotations

import functools
import os
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import trio

from .. import __version__
from ..client.connection import Connection, connect
from ..errors import MQRouteError

T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mqroute")
def main() -> None:
    """mqroute: a RabbitMQ-style message broker written in Python on trio.

    Start a broker with `mqroute server`, then connect from Python with
    `mqroute.connect("mqroute://127.0.0.1:5680")`.
    """


def URL_OPTION(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--url`` and ``--user`` for a command that talks to a broker; it gets one ``url``
    with the credentials in it. The password comes from $MQROUTE_PASSWORD or a prompt, never
    from the command line."""

    @click.option(
        "--url",
        default="mqroute://127.0.0.1:5680",
        show_default=True,
        envvar="MQROUTE_URL",
        help="The broker to talk to, with user, password and vhost if need be: "
        "mqroute://user:password@host:5680/vhost (or set MQROUTE_URL). mqroutes:// is TLS "
        "(trusted CAs from the system, or $SSL_CERT_FILE).",
    )
    @click.option(
        "--user",
        default=None,
        envvar="MQROUTE_USER",
        help="Log in as this user; its password comes from $MQROUTE_PASSWORD or a prompt.",
    )
    @functools.wraps(command)
    def with_login(*args: Any, url: str, user: str | None, **kwargs: Any) -> Any:
        return command(*args, url=login_url(url, user), **kwargs)

    return with_login


def login_url(url: str, user: str | None) -> str:
    """``url`` with ``user`` and its password in it (asked for unless $MQROUTE_PASSWORD)."""
    if user is None:
        return url
    password = os.environ.get("MQROUTE_PASSWORD")
    if password is None:
        password = click.prompt(f"Password for {user}", hide_input=True, err=True)
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    credentials = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{credentials}@{host}"))


def ask(url: str, client_name: str, request: Callable[[Connection], Awaitable[T]]) -> T:
    """Run one admin request over a fresh connection; broker errors become CLI errors."""

    async def run() -> T:
        async with connect(url, client_name=client_name) as conn:
            return await request(conn)

    try:
        return trio.run(run)
    except MQRouteError as exc:
        raise click.ClickException(str(exc)) from None
