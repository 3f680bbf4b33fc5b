"""Broker URLs, as RabbitMQ's: ``mqroute://user:password@host:port/vhost``; ``mqroutes://``
is the same over TLS (port 5681 by default). The vhost is the path, percent-encoded
(``/`` is ``%2F``, and also what an empty path means); user and password are percent-encoded
too. Without a user the client logs in as ``guest`` / ``guest``, as RabbitMQ's clients do.
"""

from __future__ import annotations

import urllib.parse

import attrs

DEFAULT_PORT = 5680
DEFAULT_TLS_PORT = 5681


@attrs.frozen
class BrokerUrl:
    host: str
    port: int
    user: str = "guest"
    password: str = attrs.field(default="guest", repr=False)
    vhost: str = "/"
    tls: bool = False

    @property
    def shown(self) -> str:
        """The URL without its password (and without the default user): for logs, reprs and
        error texts."""
        scheme = "mqroutes" if self.tls else "mqroute"
        host = f"[{self.host}]" if ":" in self.host else self.host
        vhost = "" if self.vhost == "/" else "/" + urllib.parse.quote(self.vhost, safe="")
        login = "" if self.user == "guest" else urllib.parse.quote(self.user, safe="") + "@"
        return f"{scheme}://{login}{host}:{self.port}{vhost}"


def parse_url(url: str) -> BrokerUrl:
    """A ``BrokerUrl``; ValueError (never showing the password) for anything else."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a broker URL: {exc}") from None
    if parts.scheme not in ("mqroute", "mqroutes"):
        raise ValueError(
            f"expected a mqroute:// or mqroutes:// URL, not one starting {parts.scheme!r}"
        )
    tls = parts.scheme == "mqroutes"
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return BrokerUrl(
        host=parts.hostname or "127.0.0.1",
        port=port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT),
        user=urllib.parse.unquote(parts.username) if parts.username is not None else "guest",
        password=urllib.parse.unquote(parts.password) if parts.password is not None else "guest",
        vhost=urllib.parse.unquote(path) if path else "/",
        tls=tls,
    )
