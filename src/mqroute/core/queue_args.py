"""Queue arguments (RabbitMQ's ``x-…`` names): validated once at declare, then read as fields.

Unknown ``x-`` arguments are kept and ignored, as RabbitMQ does; known ones with a bad value
make the declare fail with PRECONDITION_FAILED naming the argument, before anything changes.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..errors import PreconditionFailed
from ..model import MAX_MILLISECONDS, Table
from .dedup import window_of

OVERFLOW_MODES = ("drop-head", "reject-publish", "reject-publish-dlx")
MAX_RETRY_MULTIPLIER = 100


@attrs.frozen(kw_only=True)
class QueueArguments:
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    delivery_limit: int | None = None
    message_ttl: int | None = None  # milliseconds
    single_active_consumer: bool = False
    max_priority: int | None = None
    expires: int | None = None  # milliseconds unused before the queue is deleted
    dedup_window: int | None = None  # milliseconds a message_id is remembered
    retry_min: int | None = None  # ms: a nacked-and-requeued message waits before redelivery
    retry_max: int | None = None  # ms: the longest such wait
    retry_multiplier: int | None = None  # None: linear; 1: constant; >= 2: exponential
    consumer_timeout: int | None = None  # ms an unacked delivery may stay out

    @classmethod
    def from_table(cls, name: str, table: Table) -> QueueArguments:
        def text(key: str) -> str | None:
            value = table.get(key)
            if value is not None and not isinstance(value, str):
                raise _invalid(name, key, value, "a string")
            return value

        def count(key: str) -> int | None:
            value = table.get(key)
            if value is not None and (type(value) is not int or value < 0):
                raise _invalid(name, key, value, "a non-negative integer")
            return value

        def milliseconds(key: str) -> int | None:
            value = count(key)
            if value is not None and value > MAX_MILLISECONDS:
                raise _invalid(name, key, value, f"at most {MAX_MILLISECONDS} (milliseconds)")
            return value

        def flag(key: str) -> bool:
            value = table.get(key, False)
            if type(value) is not bool:
                raise _invalid(name, key, value, "true or false")
            return value

        overflow = text("x-overflow") or "drop-head"
        if overflow not in OVERFLOW_MODES:
            raise _invalid(name, "x-overflow", overflow, " or ".join(OVERFLOW_MODES))
        args = cls(
            dead_letter_exchange=text("x-dead-letter-exchange"),
            dead_letter_routing_key=text("x-dead-letter-routing-key"),
            max_length=count("x-max-length"),
            max_length_bytes=count("x-max-length-bytes"),
            overflow=overflow,
            delivery_limit=count("x-delivery-limit"),
            message_ttl=milliseconds("x-message-ttl"),
            single_active_consumer=flag("x-single-active-consumer"),
            max_priority=count("x-max-priority"),
            expires=milliseconds("x-expires"),
            dedup_window=window_of("queue", name, table),
            retry_min=milliseconds("x-delayed-retry-min"),
            retry_max=milliseconds("x-delayed-retry-max"),
            retry_multiplier=count("x-delayed-retry-multiplier"),
            consumer_timeout=milliseconds("x-consumer-timeout"),
        )
        for key, value in (
            ("x-delayed-retry-min", args.retry_min),
            ("x-delayed-retry-max", args.retry_max),
            ("x-delayed-retry-multiplier", args.retry_multiplier),
        ):
            if value == 0:
                raise _invalid(name, key, value, "a positive integer")
        if args.expires == 0:
            raise _invalid(name, "x-expires", 0, "a positive integer (milliseconds)")
        if args.retry_multiplier is not None and args.retry_multiplier > MAX_RETRY_MULTIPLIER:
            raise _invalid(
                name,
                "x-delayed-retry-multiplier",
                args.retry_multiplier,
                f"an integer from 1 to {MAX_RETRY_MULTIPLIER}",
            )
        if args.max_priority is not None and not 1 <= args.max_priority <= 255:
            raise _invalid(name, "x-max-priority", args.max_priority, "an integer from 1 to 255")
        if args.dead_letter_routing_key is not None and args.dead_letter_exchange is None:
            raise PreconditionFailed(
                f"invalid arguments for queue {name!r}: x-dead-letter-routing-key is set "
                "but x-dead-letter-exchange is not"
            )
        return args

    def retry_delay(self, attempt: int) -> float | None:
        """Seconds a message failed ``attempt`` times waits before redelivery, if it waits.

        Linear by default (min x attempt), constant with multiplier 1, exponential
        (min x multiplier^(attempt-1)) above; never more than x-delayed-retry-max.
        """
        if self.retry_min is None:
            return None
        if self.retry_multiplier is None:
            delay = self.retry_min * attempt
        else:  # past 2^64 every delay is at its cap: keep the power small
            delay = self.retry_min * self.retry_multiplier ** min(attempt - 1, 64)
        return min(delay, self.retry_max or MAX_MILLISECONDS) / 1000


def _invalid(queue: str, key: str, value: Any, expected: str) -> PreconditionFailed:
    return PreconditionFailed(
        f"invalid argument {key!r} for queue {queue!r}: {value!r}; expected {expected}"
    )
