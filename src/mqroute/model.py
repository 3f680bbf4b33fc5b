"""Value objects shared by every layer: messages, declarations, bindings, statistics.

They are frozen attrs classes and know nothing of the wire format or of disk; the protocol and
the store translate them at the edge.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

#: The exchange types a broker knows, by their AMQP names.
EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")

#: A header or argument table: str keys, CBOR-representable values.
Table = dict[str, Any]

DestinationKind = Literal["queue", "exchange"]


#: Names, keys, consumer tags and property strings are AMQP short strings: at most this many
#: bytes in UTF-8. Longer ones are refused, so no client can make routing or storage costly.
MAX_SHORT_STRING = 255

#: The longest TTL, expiration, x-delay or timeout in milliseconds (2^32 - 1, as RabbitMQ).
MAX_MILLISECONDS = 2**32 - 1
#: The direct reply-to pseudo-queue, as RabbitMQ names it: replies with no queue declared.
REPLY_TO = "amq.rabbitmq.reply-to"


def utf8_length_over(value: str, limit: int = MAX_SHORT_STRING) -> int | None:
    """The UTF-8 length of ``value`` if it is over ``limit`` bytes, else None (cheap when short)."""
    if len(value) * 4 <= limit:
        return None
    size = len(value.encode())
    return size if size > limit else None


def brief(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error texts about client input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _optional_str(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a string, not {type(value).__name__}")
    size = utf8_length_over(value)
    if size is not None:
        raise ValueError(
            f"{attribute.name} is longer than {MAX_SHORT_STRING} bytes ({size} bytes in UTF-8)"
        )


def _check_priority(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if type(value) is not int or not 0 <= value <= 255:
        raise ValueError(f"priority must be an integer from 0 to 255, not {value!r}")


def _check_expiration(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if (
        not isinstance(value, str)
        or not value.isascii()
        or not value.isdigit()
        or len(value) > 10
        or int(value) > MAX_MILLISECONDS
    ):
        raise ValueError(
            f"expiration must be a string of milliseconds from '0' to '{MAX_MILLISECONDS}' "
            f"(like '60000'), not {brief(value)}"
        )


def _check_timestamp(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and type(value) is not int:
        raise TypeError(f"timestamp must be an integer (seconds since the epoch), not {value!r}")


def _check_table(inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{attribute.name} must be a table with string keys")


@attrs.frozen(kw_only=True)
class Properties:
    """AMQP basic properties. ``persistent`` stands for delivery mode 2."""

    content_type: str | None = attrs.field(default=None, validator=_optional_str)
    content_encoding: str | None = attrs.field(default=None, validator=_optional_str)
    headers: Table | None = attrs.field(default=None, validator=_check_table, hash=False)
    persistent: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    priority: int | None = attrs.field(default=None, validator=_check_priority)
    correlation_id: str | None = attrs.field(default=None, validator=_optional_str)
    reply_to: str | None = attrs.field(default=None, validator=_optional_str)
    expiration: str | None = attrs.field(default=None, validator=_check_expiration)
    message_id: str | None = attrs.field(default=None, validator=_optional_str)
    timestamp: int | None = attrs.field(default=None, validator=_check_timestamp)
    type: str | None = attrs.field(default=None, validator=_optional_str)
    user_id: str | None = attrs.field(default=None, validator=_optional_str)
    app_id: str | None = attrs.field(default=None, validator=_optional_str)


#: Property names in wire order; the protocol and SDK use this list.
PROPERTY_NAMES: tuple[str, ...] = tuple(a.name for a in attrs.fields(Properties))

EMPTY_PROPERTIES = Properties()


@attrs.frozen(kw_only=True)
class Message:
    """One published message as the broker routes and stores it."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Properties = EMPTY_PROPERTIES


@attrs.frozen(kw_only=True)
class ExchangeSpec:
    name: str
    type: str
    durable: bool = False
    auto_delete: bool = False
    internal: bool = False
    arguments: Table = attrs.field(factory=dict, hash=False)

    def equivalent(self, other: ExchangeSpec) -> bool:
        """Whether a redeclare with ``other`` is the same declaration (RabbitMQ's test)."""
        return (self.type, self.durable, self.auto_delete, self.internal, self.arguments) == (
            other.type,
            other.durable,
            other.auto_delete,
            other.internal,
            other.arguments,
        )


@attrs.frozen(kw_only=True)
class QueueSpec:
    name: str
    durable: bool = False
    exclusive: bool = False
    auto_delete: bool = False
    arguments: Table = attrs.field(factory=dict, hash=False)

    def equivalent(self, other: QueueSpec) -> bool:
        return (self.durable, self.exclusive, self.auto_delete, self.arguments) == (
            other.durable,
            other.exclusive,
            other.auto_delete,
            other.arguments,
        )


@attrs.frozen(kw_only=True)
class Binding:
    """A route from exchange ``source`` to a queue or exchange ``destination``."""

    source: str
    destination: str
    destination_kind: DestinationKind
    routing_key: str = ""
    arguments: Table = attrs.field(factory=dict, hash=False)

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity of the binding: two binds with equal keys are one binding."""
        return (
            self.source,
            self.destination_kind,
            self.destination,
            self.routing_key,
            freeze(self.arguments),
        )


def freeze(value: Any) -> Any:
    """A hashable, type-preserving stand-in for a table value (True and 1 stay distinct)."""
    if isinstance(value, dict):
        return ("map", tuple(sorted((k, freeze(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("list", tuple(freeze(v) for v in value))
    return (type(value).__name__, value)


def same_value(a: Any, b: Any) -> bool:
    """Equality by type and value, as header matching needs (True is not 1, 1 is not 1.0)."""
    return bool(freeze(a) == freeze(b))


# --- records the broker hands to a front end --------------------------------------------------


@attrs.frozen(kw_only=True)
class Delivery:
    """A message handed to a consumer (or returned by ``get``)."""

    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    message: Message
    delivery_count: int
    message_count: int | None = None  # only for get: ready messages left after this one


@attrs.frozen(kw_only=True)
class Returned:
    """An unroutable mandatory message going back to its publisher, before its confirm."""

    publish_seq: int
    code: str
    reply_text: str
    message: Message


@attrs.frozen(kw_only=True)
class Confirmed:
    """A publisher confirm: ``seq`` (and, if ``multiple``, everything below it) is settled."""

    seq: int
    multiple: bool
    ok: bool = True
    error_code: str | None = None  # why a nack happened, e.g. NOT_FOUND
    error_text: str | None = None


@attrs.frozen(kw_only=True)
class CancelledByBroker:
    """The broker cancelled a consumer (its queue was deleted)."""

    consumer_tag: str
    reason: str


@attrs.frozen(kw_only=True)
class DeliveryTimedOut:
    """An unacked delivery passed its x-consumer-timeout: it was requeued; the tag is void."""

    consumer_tag: str
    delivery_tag: int


Event = Delivery | Returned | Confirmed | CancelledByBroker | DeliveryTimedOut


# --- statistics -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class BrokerStats:
    exchanges: int
    queues: int
    bindings: int
    sessions: int
    consumers: int
    ready: int
    unacked: int
    published: int
    delivered: int
    acked: int
