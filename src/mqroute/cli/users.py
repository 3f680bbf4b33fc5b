"""Users, vhosts and permissions: ``mqroute user``, ``mqroute vhost``, ``mqroute permissions``.

They edit the data directory's definitions.json (server/users.py), which a running server
reads again at its next login. Passwords come from a prompt or stdin, never from the command
line (where ``ps`` and shell history would show them).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from ..server import users
from ..server.datadir import default_data_dir
from ..server.users import KNOWN_TAGS, Definitions, Permissions
from .main import main

DATA_DIR_OPTION = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The broker's data directory (as for `mqroute server`).",
)


@contextlib.contextmanager
def _editing(data_dir: Path | None) -> Iterator[Definitions]:
    """The definitions, saved after the block; one editor at a time (a lock file)."""
    where = data_dir or default_data_dir()
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(where / "definitions.lock", os.O_RDWR | os.O_CREAT, 0o600)  # private, as all
    with open(fd, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        definitions = users.load(where)
        try:
            yield definitions
        except users.DefinitionsError as exc:
            raise click.ClickException(str(exc)) from None
        users.save(where, definitions)


def _reading(data_dir: Path | None) -> Definitions:
    try:
        return users.load(data_dir or default_data_dir())
    except users.DefinitionsError as exc:
        raise click.ClickException(str(exc)) from None


def _password(stdin: bool) -> str:
    if stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("the password must not be empty")
    return password


PASSWORD_STDIN = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)


@main.group()
def user() -> None:
    """Add, list and delete users; set passwords and tags."""


@user.command("add")
@click.argument("name")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help=f"A tag ({', '.join(KNOWN_TAGS)}); repeat for more.",
)
@PASSWORD_STDIN
@DATA_DIR_OPTION
def user_add(name: str, tags: tuple[str, ...], password_stdin: bool, data_dir: Path | None) -> None:
    """Add user NAME (no permissions yet: see `mqroute permissions set`)."""
    password = _password(password_stdin)
    with _editing(data_dir) as definitions:
        definitions.add_user(name, password, tags)
    click.echo(f"user {name!r} added")


@user.command("list")
@DATA_DIR_OPTION
def user_list(data_dir: Path | None) -> None:
    """The users and their tags."""
    for found in _reading(data_dir).users.values():
        click.echo(f"{found.name}\t{','.join(found.tags)}")


@user.command("delete")
@click.argument("name")
@DATA_DIR_OPTION
def user_delete(name: str, data_dir: Path | None) -> None:
    """Delete user NAME (``guest`` too: do it before listening beyond localhost)."""
    with _editing(data_dir) as definitions:
        definitions.delete_user(name)
    click.echo(f"user {name!r} deleted")


@user.command("passwd")
@click.argument("name")
@PASSWORD_STDIN
@DATA_DIR_OPTION
def user_passwd(name: str, password_stdin: bool, data_dir: Path | None) -> None:
    """Set a new password for user NAME."""
    password = _password(password_stdin)
    with _editing(data_dir) as definitions:
        definitions.set_password(name, password)
    click.echo(f"password of {name!r} changed")


@user.command("tags")
@click.argument("name")
@click.argument("tags", nargs=-1)
@DATA_DIR_OPTION
def user_tags(name: str, tags: tuple[str, ...], data_dir: Path | None) -> None:
    """Set the tags of user NAME (none: no tags). administrator may do everything;
    monitoring may list everything and see the status; management may list and redrive."""
    with _editing(data_dir) as definitions:
        definitions.set_tags(name, tags)
    click.echo(f"tags of {name!r}: {', '.join(tags) or '(none)'}")


@main.group()
def vhost() -> None:
    """Add, list and delete vhosts: namespaces of exchanges, queues and messages."""


@vhost.command("add")
@click.argument("name")
@DATA_DIR_OPTION
def vhost_add(name: str, data_dir: Path | None) -> None:
    """Add vhost NAME; clients name it in their URL (mqroute://u:p@host:5680/NAME)."""
    with _editing(data_dir) as definitions:
        definitions.add_vhost(name)
    click.echo(f"vhost {name!r} added")


@vhost.command("list")
@DATA_DIR_OPTION
def vhost_list(data_dir: Path | None) -> None:
    for name in _reading(data_dir).vhosts:
        click.echo(name)


@vhost.command("delete")
@click.argument("name")
@DATA_DIR_OPTION
def vhost_delete(name: str, data_dir: Path | None) -> None:
    """Delete vhost NAME. A running server closes its connections and stops serving it; its
    messages stay on disk under vhosts/ until you remove them."""
    with _editing(data_dir) as definitions:
        definitions.delete_vhost(name)
    click.echo(f"vhost {name!r} deleted")


@main.group()
def permissions() -> None:
    """Set, list and clear what users may do in vhosts."""


@permissions.command("set")
@click.argument("user_name", metavar="USER")
@click.argument("vhost_name", metavar="VHOST")
@click.argument("configure")
@click.argument("write")
@click.argument("read")
@DATA_DIR_OPTION
def permissions_set(
    user_name: str, vhost_name: str, configure: str, write: str, read: str, data_dir: Path | None
) -> None:
    """USER may CONFIGURE, WRITE and READ resources whose names match these regular
    expressions in VHOST, as RabbitMQ's set_permissions: ".*" is everything, "^$" nothing.

    \b
    configure: declare and delete exchanges and queues
    write:     publish to an exchange, bind to a queue (or destination exchange)
    read:      consume, get and purge a queue, bind from an exchange
    """
    try:
        granted = Permissions(configure, write, read)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    with _editing(data_dir) as definitions:
        definitions.set_permissions(user_name, vhost_name, granted)
    click.echo(f"permissions of {user_name!r} in {vhost_name!r} set")


@permissions.command("clear")
@click.argument("user_name", metavar="USER")
@click.argument("vhost_name", metavar="VHOST")
@DATA_DIR_OPTION
def permissions_clear(user_name: str, vhost_name: str, data_dir: Path | None) -> None:
    """USER may no longer use VHOST at all."""
    with _editing(data_dir) as definitions:
        definitions.clear_permissions(user_name, vhost_name)
    click.echo(f"permissions of {user_name!r} in {vhost_name!r} cleared")


@permissions.command("list")
@DATA_DIR_OPTION
def permissions_list(data_dir: Path | None) -> None:
    """Every user's permissions, vhost by vhost."""
    for name, per_vhost in _reading(data_dir).permissions.items():
        for where, p in per_vhost.items():
            click.echo(f"{name}\t{where}\t{p.configure}\t{p.write}\t{p.read}")
