"""Who may do what in a vhost, as RabbitMQ defines it: three regular expressions per user and
vhost (configure, write, read) matched against the names of exchanges and queues.

The vhost facade checks an ``Access`` before it changes anything (docs/security.md has the
table). Answers are cached per name, so a publisher pays one dict lookup per message, not a
regex match. ``FULL`` allows everything: tests, and the embedded broker without users.
"""

from __future__ import annotations

import re
from typing import Literal

import attrs

from ..errors import AccessRefused, PreconditionFailed

Permission = Literal["configure", "write", "read"]
Resource = Literal["exchange", "queue"]

#: Listings (queues, exchanges, bindings, consumers) and route explain.
MANAGEMENT_TAGS = frozenset({"administrator", "monitoring", "management"})
#: Everyone's connections and the broker's status.
MONITORING_TAGS = frozenset({"administrator", "monitoring"})
#: Moving messages out of dead-letter queues (redrive), beside read and write permissions.
REDRIVE_TAGS = frozenset({"administrator", "management"})

_CACHE_SIZE = 4096  # names remembered per permission; past it the cache starts again


@attrs.frozen
class Permissions:
    """One user's permissions in one vhost: regular expressions, unanchored as RabbitMQ's
    (``.*`` is everything, ``^$`` nothing, ``^app\\.`` names starting ``app.``)."""

    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"

    def __attrs_post_init__(self) -> None:
        for kind in ("configure", "write", "read"):
            try:
                re.compile(getattr(self, kind))
            except re.error as exc:
                raise ValueError(f"{kind} permission {getattr(self, kind)!r}: {exc}") from None


class Access:
    """What ``user`` may do in ``vhost``; checks raise AccessRefused naming what is missing."""

    def __init__(
        self,
        user: str,
        vhost: str,
        permissions: Permissions | None,
        tags: frozenset[str] = frozenset(),
    ) -> None:
        self.user = user
        self.vhost = vhost
        self.tags = tags
        self.permissions = permissions
        full = permissions is not None and all(
            p == ".*" for p in (permissions.configure, permissions.write, permissions.read)
        )
        self.everything = full
        self._patterns: dict[str, re.Pattern[str] | None] = {
            kind: re.compile(getattr(permissions, kind)) if permissions is not None else None
            for kind in ("configure", "write", "read")
        }
        self._cache: dict[tuple[str, str], bool] = {}

    def allows(self, permission: Permission, name: str) -> bool:
        if self.everything:
            return True
        key = (permission, name)
        hit = self._cache.get(key)
        if hit is None:
            pattern = self._patterns[permission]
            hit = pattern is not None and pattern.search(name) is not None
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def check(self, permission: Permission, resource: Resource, name: str) -> None:
        """AccessRefused unless ``permission`` on the ``resource`` called ``name``. The
        default exchange is ``amq.default`` here, as in RabbitMQ."""
        if self.everything:
            return
        shown = (name or "amq.default") if resource == "exchange" else name
        if not self.allows(permission, shown):
            raise AccessRefused(
                f"access to {resource} {shown!r} in vhost {self.vhost!r} refused for user "
                f"{self.user!r}: {permission} permission needed"
            )

    def check_tags(self, allowed: frozenset[str], what: str) -> None:
        """AccessRefused unless the user has one of the ``allowed`` tags."""
        if not self.tags & allowed:
            needed = " or ".join(sorted(allowed))
            raise AccessRefused(f"{what} refused for user {self.user!r}: needs the {needed} tag")

    def check_user_id(self, user_id: str | None) -> None:
        """A message's ``user_id`` must be the one who publishes it (as RabbitMQ validates)."""
        if user_id is not None and user_id != self.user:
            raise PreconditionFailed(
                f"user_id property set to {user_id!r} but authenticated user was {self.user!r}"
            )

    def __repr__(self) -> str:
        return f"<Access user={self.user!r} vhost={self.vhost!r}>"


#: Everything allowed: tests, and a broker without users (no data directory, no definitions).
FULL = Access("guest", "/", Permissions(), frozenset({"administrator"}))
