"""Users, vhosts and permissions: the broker's definitions, kept in ``definitions.json`` in the
data directory (RabbitMQ keeps the same things in its internal database).

Passwords are stored as salted scrypt hashes (hashlib; about 50 ms to compute, on purpose). A
connection's login checks its password once with scrypt in a worker thread, then remembers a
keyed digest of it for as long as the server runs, so reconnecting costs microseconds, not
another scrypt. The file is written atomically (a temporary file, fsync, rename) and is
readable by its owner only; the CLI edits it and a running server reloads it when it changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from ..core.access import Access, Permissions
from ..errors import ServerError

__all__ = [
    "DEFAULT_VHOST",
    "GUEST",
    "KNOWN_TAGS",
    "Definitions",
    "DefinitionsError",
    "PasswordCache",
    "Permissions",
    "User",
    "definitions_path",
    "hash_password",
    "is_cheap",
    "load",
    "save",
    "verify_password",
]

DEFINITIONS_NAME = "definitions.json"
DEFAULT_VHOST = "/"
GUEST = "guest"
#: Tags RabbitMQ knows (any other tag is kept, and means nothing to the broker).
KNOWN_TAGS = ("administrator", "monitoring", "management", "policymaker", "impersonator")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")


class DefinitionsError(ServerError):
    """A definitions change that cannot be made (no such user, a bad name, …)."""


def hash_password(password: str, *, fast: bool = False) -> str:
    """A salted scrypt hash. ``fast`` (a cost of 16 instead of 16,384) only for definitions
    that are never written anywhere: an embedded broker's, a test's."""
    salt = secrets.token_bytes(16)
    n = 16 if fast else SCRYPT_N
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches the ``stored`` hash (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=32,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


def is_cheap(stored: str) -> bool:
    """A hash made with ``fast=True``: checked on the event loop (microseconds), not in a
    worker thread."""
    parts = stored.split("$")
    return len(parts) == 6 and parts[1].isdigit() and int(parts[1]) <= 1024


@attrs.define
class User:
    name: str
    password_hash: str
    tags: list[str] = attrs.Factory(list)

    def __repr__(self) -> str:  # the hash stays out of logs and tracebacks
        return f"User(name={self.name!r}, tags={self.tags!r})"


@attrs.define
class Definitions:
    """Users, vhosts and each user's permissions per vhost."""

    users: dict[str, User] = attrs.Factory(dict)
    vhosts: list[str] = attrs.Factory(lambda: [DEFAULT_VHOST])
    permissions: dict[str, dict[str, Permissions]] = attrs.Factory(dict)  # user -> vhost ->

    @classmethod
    def default(cls, *, fast: bool = False) -> Definitions:
        """What a new broker starts with, as RabbitMQ: vhost ``/`` and ``guest``/``guest``
        (an administrator with every permission on ``/``, who may log in from loopback only).
        ``fast``: a cheap hash, for definitions kept in memory only."""
        definitions = cls()
        definitions.users[GUEST] = User(GUEST, hash_password(GUEST, fast=fast), ["administrator"])
        definitions.permissions[GUEST] = {DEFAULT_VHOST: Permissions()}
        return definitions

    # --- users -------------------------------------------------------------------------------

    def add_user(
        self, name: str, password: str, tags: Iterable[str] = (), *, fast: bool = False
    ) -> None:
        _check_name("user", name)
        if name in self.users:
            raise DefinitionsError(f"user {name!r} exists already")
        self.users[name] = User(name, hash_password(password, fast=fast), list(tags))

    def delete_user(self, name: str) -> None:
        self._user(name)
        del self.users[name]
        self.permissions.pop(name, None)

    def set_password(self, name: str, password: str) -> None:
        self._user(name).password_hash = hash_password(password)

    def set_tags(self, name: str, tags: Iterable[str]) -> None:
        self._user(name).tags = sorted(set(tags))

    def _user(self, name: str) -> User:
        user = self.users.get(name)
        if user is None:
            raise DefinitionsError(f"no user {name!r}")
        return user

    # --- vhosts ------------------------------------------------------------------------------

    def add_vhost(self, name: str) -> None:
        _check_name("vhost", name)
        if name in self.vhosts:
            raise DefinitionsError(f"vhost {name!r} exists already")
        self.vhosts.append(name)

    def delete_vhost(self, name: str) -> None:
        if name not in self.vhosts:
            raise DefinitionsError(f"no vhost {name!r}")
        self.vhosts.remove(name)
        for per_vhost in self.permissions.values():
            per_vhost.pop(name, None)

    # --- permissions -------------------------------------------------------------------------

    def set_permissions(self, user: str, vhost: str, permissions: Permissions) -> None:
        self._user(user)
        if vhost not in self.vhosts:
            raise DefinitionsError(f"no vhost {vhost!r}")
        self.permissions.setdefault(user, {})[vhost] = permissions

    def clear_permissions(self, user: str, vhost: str) -> None:
        self._user(user)
        self.permissions.get(user, {}).pop(vhost, None)

    def access(self, user: str, vhost: str) -> Access | None:
        """What ``user`` may do in ``vhost``, or None if it may not use that vhost at all."""
        found = self.users.get(user)
        permissions = self.permissions.get(user, {}).get(vhost)
        if found is None or permissions is None or vhost not in self.vhosts:
            return None
        return Access(user, vhost, permissions, frozenset(found.tags))

    # --- the file ----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "users": [
                {"name": u.name, "password_hash": u.password_hash, "tags": u.tags}
                for u in self.users.values()
            ],
            "vhosts": list(self.vhosts),
            "permissions": [
                {"user": user, "vhost": vhost, **attrs.asdict(p)}
                for user, per_vhost in self.permissions.items()
                for vhost, p in per_vhost.items()
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Definitions:
        definitions = cls(vhosts=list(data["vhosts"]))
        for u in data["users"]:
            definitions.users[u["name"]] = User(u["name"], u["password_hash"], list(u["tags"]))
        for p in data["permissions"]:
            definitions.permissions.setdefault(p["user"], {})[p["vhost"]] = Permissions(
                p["configure"], p["write"], p["read"]
            )
        return definitions


def definitions_path(data_dir: Path) -> Path:
    return data_dir / DEFINITIONS_NAME


def load(data_dir: Path) -> Definitions:
    """The definitions in ``data_dir``; a new broker's (written there) if it has none."""
    path = definitions_path(data_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        definitions = Definitions.default()
        save(data_dir, definitions)
        return definitions
    try:
        return Definitions.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise DefinitionsError(
            f"{path} is not a definitions file mqroute can read: {exc}"
        ) from None


def save(data_dir: Path, definitions: Definitions) -> None:
    """Write atomically, owner-only: a reader sees the old file or the new, never half."""
    path = definitions_path(data_dir)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(definitions.to_json(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise DefinitionsError(
            f"{kind} name {name!r} must be 1 to 255 characters, none of them control characters"
        )


class PasswordCache:
    """Logins already checked with scrypt, remembered as a keyed digest (never the password)
    so the next login with the same password needs no scrypt."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._known: dict[str, tuple[str, bytes]] = {}  # user -> (stored hash, digest)

    def _digest(self, user: str, password: str) -> bytes:
        return hmac.new(self._key, f"{user}\x00{password}".encode(), hashlib.sha256).digest()

    def known(self, user: str, stored: str, password: str) -> bool:
        hit = self._known.get(user)
        return (
            hit is not None
            and hit[0] == stored
            and hmac.compare_digest(hit[1], self._digest(user, password))
        )

    def remember(self, user: str, stored: str, password: str) -> None:
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[user] = (stored, self._digest(user, password))
