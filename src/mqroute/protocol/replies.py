"""Typed answers to requests. On the wire every success is ``Ok(rid, result)``, a map whose
keys docs/protocol.md lists per request; here each request has one reply class, so neither
side spells the keys. The server calls ``ok_frame``; the client ``read_reply`` with the type
of the request it sent, which checks the map (a missing or mistyped key is the peer's
protocol error, not a KeyError).
"""

from __future__ import annotations

from typing import Any

import attrs

from ..errors import RemoteProtocolError
from ..model import Table
from .frames import (
    Bind,
    Cancel,
    Consume,
    DeclareExchange,
    DeclareQueue,
    DeleteExchange,
    DeleteQueue,
    ExplainRoute,
    Frame,
    Get,
    Inspect,
    Ok,
    PurgeQueue,
    Redrive,
    Unbind,
)


@attrs.frozen(kw_only=True)
class Done:
    """A request that returns nothing: declare or delete an exchange, bind, unbind, cancel."""


@attrs.frozen(kw_only=True)
class DeclareQueueOk:
    queue: str
    message_count: int
    consumer_count: int
    arguments: Table = attrs.Factory(dict)
    delayed_count: int = 0


@attrs.frozen(kw_only=True)
class DeleteQueueOk:
    message_count: int


@attrs.frozen(kw_only=True)
class PurgeQueueOk:
    message_count: int


@attrs.frozen(kw_only=True)
class ConsumeOk:
    consumer_tag: str


@attrs.frozen(kw_only=True)
class RedriveOk:
    moved: int


@attrs.frozen(kw_only=True)
class ExplainRouteOk:
    """``steps`` are the matching bindings, exchange by exchange (docs/protocol.md)."""

    queues: list[str]
    steps: list[Table]


@attrs.frozen(kw_only=True)
class InspectOk:
    """One page of rows (a table for ``status``) and how many rows there are in all."""

    result: Any
    total: int


@attrs.frozen(kw_only=True)
class GetEmpty:
    """Get found no ready message (a Get that found one is answered with GetOk)."""


Reply = (
    Done
    | DeclareQueueOk
    | DeleteQueueOk
    | PurgeQueueOk
    | ConsumeOk
    | RedriveOk
    | ExplainRouteOk
    | InspectOk
    | GetEmpty
)

#: The reply class of each request's Ok.
REPLIES: dict[type[Frame], type[Any]] = {
    DeclareExchange: Done,
    DeleteExchange: Done,
    Bind: Done,
    Unbind: Done,
    Cancel: Done,
    DeclareQueue: DeclareQueueOk,
    DeleteQueue: DeleteQueueOk,
    PurgeQueue: PurgeQueueOk,
    Consume: ConsumeOk,
    Redrive: RedriveOk,
    ExplainRoute: ExplainRouteOk,
    Inspect: InspectOk,
    Get: GetEmpty,
}

_TYPES: dict[str, Any] = {
    "str": str,
    "int": int,
    "Table": dict,
    "list[str]": list,
    "list[Table]": list,
}


def ok_frame(rid: int, reply: Any) -> Ok:
    """The Ok frame that carries ``reply``."""
    return Ok(rid=rid, result=attrs.asdict(reply, recurse=False))


def read_reply(request: type[Frame], ok: Ok) -> Any:
    """The typed reply to ``request`` that ``ok`` carries, or RemoteProtocolError."""
    cls = REPLIES[request]
    fields: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if field.name not in ok.result and field.default is not attrs.NOTHING:
            continue
        value = ok.result.get(field.name)
        want = _TYPES.get(field.type) if isinstance(field.type, str) else None
        mistyped = want is not None and (
            not isinstance(value, want) or (want is int and type(value) is bool)
        )
        if field.name not in ok.result or mistyped:
            raise RemoteProtocolError(
                f"the answer to {request.__name__} has no valid {field.name!r}: {value!r}"
            )
        fields[field.name] = value
    return cls(**fields)
