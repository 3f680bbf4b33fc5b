"""Load generator behind ``mqroute bench``, modelled on RabbitMQ's PerfTest.

Producers and consumers each run in their own process (started with ``spawn``) so that the
client side is not limited by one interpreter. Each body starts with the producer's
``time.monotonic_ns()`` — one clock for every process on the machine — so consumers measure
end-to-end latency without a clock protocol. Producers measure confirm latency themselves.

Workers report to the parent over a ``multiprocessing`` queue: ``ready`` (consumers, once
subscribed), ``tick`` (running count, twice a second, for the live progress line) and ``done``
(counts, first/last timestamps and latency histograms). The parent decides when the run ends and
tells the workers through two events, one for producers and one for consumers.

The broker is reached through a *driver* (``MQRouteDriver`` here); benchmarks/compare_rabbitmq.py
plugs in pika and aio-pika drivers so the same workload, the same bodies and the same statistics
are used against RabbitMQ.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.process
import queue as stdlib_queue
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from ..client.url import parse_url
from ..errors import BenchError

TIMESTAMP = struct.Struct("<q")
# A publisher that asked for no confirm window still needs one: the broker would otherwise
# buffer an unbounded backlog in the producer's socket.
DEFAULT_WINDOW = 10_000
TICK_SECONDS = 0.5
# After producers finish, consumers that make no progress for this long end the run.
DRAIN_IDLE_SECONDS = 10.0


@attrs.frozen
class BenchOptions:
    url: str = "mqroute://127.0.0.1:5680"
    producers: int = 1
    consumers: int = 1
    size: int = 256
    confirm: int | None = None
    persistent: bool = False
    prefetch: int = 100
    multi_ack_every: int = 0
    auto_ack: bool = False
    rate: float | None = None
    count: int | None = None
    time: float | None = None
    exchange: str | None = None
    exchange_type: str = "direct"
    queues: int = 1
    spread: bool = False
    queue_prefix: str = "bench"

    def check(self) -> None:
        """Raise BenchError naming the first option that cannot work."""
        if self.producers < 0 or self.consumers < 0:
            raise BenchError("--producers and --consumers cannot be negative")
        if self.producers == 0 and self.consumers == 0:
            raise BenchError("nothing to run: --producers and --consumers are both 0")
        if self.queues < 1:
            raise BenchError("--queues must be at least 1")
        if self.count is None and self.time is None:
            raise BenchError("give --count (messages per producer) or --time (seconds)")
        if self.producers == 0 and self.time is None:
            raise BenchError("with --producers 0 (drain only) give --time")
        if self.size < 0:
            raise BenchError("--size cannot be negative")
        if self.confirm is not None and self.confirm < 1:
            raise BenchError("--confirm must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise BenchError("--rate must be positive")
        if (
            not self.auto_ack
            and self.prefetch
            and self.multi_ack_every > self.prefetch
            and self.consumers
        ):
            raise BenchError(
                f"--multi-ack-every {self.multi_ack_every} exceeds --prefetch {self.prefetch}: "
                "the consumer would stop receiving before it ever acks"
            )
        if self.exchange_type not in ("direct", "fanout", "topic", "headers"):
            raise BenchError(f"unknown --exchange-type {self.exchange_type!r}")

    @property
    def window(self) -> int:
        return self.confirm or DEFAULT_WINDOW

    @property
    def exchange_name(self) -> str:
        """The default exchange for one queue; an exchange named "bench" for fan-out."""
        if self.exchange is not None:
            return self.exchange
        return "" if self.queues == 1 and self.exchange_type == "direct" else self.queue_prefix

    @property
    def queue_names(self) -> list[str]:
        if self.queues == 1:
            return [self.queue_prefix]
        return [f"{self.queue_prefix}-{i + 1}" for i in range(self.queues)]

    def binding_key(self, queue: str) -> str:
        return "" if self.exchange_type == "fanout" else (queue if self.spread else "bench")

    @property
    def routing_keys(self) -> list[str]:
        """The keys producers cycle through: one per queue with --spread, else one for all."""
        if not self.exchange_name:
            return self.queue_names if self.spread else [self.queue_names[0]]
        return [self.binding_key(q) for q in self.queue_names] if self.spread else ["bench"]

    @property
    def copies(self) -> int:
        """How many queues each published message lands in."""
        return 1 if self.spread or not self.exchange_name else self.queues

    def queues_for(self, consumer: int) -> list[str]:
        names = self.queue_names
        if self.consumers >= len(names):
            return [names[consumer % len(names)]]
        return names[consumer :: self.consumers]

    def describe(self) -> str:
        parts = [
            f"{self.producers} producer{'s' * (self.producers != 1)}",
            f"{self.consumers} consumer{'s' * (self.consumers != 1)}",
            f"{self.size} B",
            "persistent" if self.persistent else "transient",
            f"confirm {self.confirm}" if self.confirm else f"window {self.window}",
            "auto-ack" if self.auto_ack else f"prefetch {self.prefetch}",
        ]
        if self.multi_ack_every and not self.auto_ack:
            parts.append(f"multi-ack every {self.multi_ack_every}")
        if self.queues > 1:
            parts.append(
                f"{self.queues} queues ({'spread' if self.spread else self.exchange_type})"
            )
        if self.rate:
            parts.append(f"rate {self.rate:g}/s per producer")
        return ", ".join(parts)


class Histogram:
    """Latencies in log-spaced buckets 1 % wide: constant memory, mergeable across processes."""

    SCALE = 100  # buckets per factor of e
    SIZE = 3200  # up to e**32 ns, about 2.5 years

    __slots__ = ("counts", "max", "min", "n")

    def __init__(self) -> None:
        self.counts = [0] * self.SIZE
        self.n = 0
        self.min = math.inf
        self.max = 0.0

    def add(self, ns: int) -> None:
        ns = max(ns, 1)
        self.counts[min(int(math.log(ns) * self.SCALE), self.SIZE - 1)] += 1
        self.n += 1
        if ns < self.min:
            self.min = ns
        if ns > self.max:
            self.max = ns

    def merge(self, other: Histogram) -> None:
        for i, c in enumerate(other.counts):
            if c:
                self.counts[i] += c
        self.n += other.n
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def percentile(self, p: float) -> float:
        """Nanoseconds below which ``p`` percent of the samples fall (to within 1 %)."""
        if not self.n:
            return math.nan
        target = self.n * p / 100
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= target:
                return min(max(math.exp((i + 0.5) / self.SCALE), self.min), self.max)
        return self.max

    def summary_ms(self) -> dict[str, float] | None:
        if not self.n:
            return None
        out = {"min": self.min / 1e6}
        for p in (50, 75, 95, 99):
            out[f"p{p}"] = self.percentile(p) / 1e6
        out["max"] = self.max / 1e6
        return out

    def to_wire(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "min": self.min,
            "max": self.max,
            "counts": {i: c for i, c in enumerate(self.counts) if c},
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Histogram:
        h = cls()
        h.n, h.min, h.max = data["n"], data["min"], data["max"]
        for i, c in data["counts"].items():
            h.counts[i] = c
        return h


class Stats:
    """One worker's counters. Drivers call ``record``/``sent`` and poll ``stop``."""

    def __init__(self, out: Any, role: str, index: int) -> None:
        self.out = out
        self.role = role
        self.index = index
        self.count = 0
        self.first_ns = 0
        self.last_ns = 0
        self.latency = Histogram()  # confirm latency for producers, end to end for consumers
        self.stop = False

    def ready(self) -> None:
        self.out.put(("ready", self.role, self.index, None))

    def sent(self) -> None:
        now = time.monotonic_ns()
        if not self.count:
            self.first_ns = now
        self.count += 1
        self.last_ns = now

    def received(self, body: bytes) -> None:
        now = time.monotonic_ns()
        if not self.count:
            self.first_ns = now
        self.count += 1
        self.last_ns = now
        if len(body) >= TIMESTAMP.size:
            self.latency.add(now - TIMESTAMP.unpack_from(body)[0])

    def result(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "latency": self.latency.to_wire(),
        }


def make_body(size: int) -> Callable[[], bytes]:
    """Bodies of ``size`` bytes that start with the send time (when there is room for it)."""
    if size < TIMESTAMP.size:
        fixed = b"x" * size
        return lambda: fixed
    pad = b"x" * (size - TIMESTAMP.size)
    pack = TIMESTAMP.pack
    return lambda: pack(time.monotonic_ns()) + pad


class RateLimiter:
    """Spaces sends ``1/rate`` apart; returns how long to sleep before the next one."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1e9 / rate if rate else 0.0
        self.start = time.monotonic_ns()
        self.sent = 0

    def delay(self) -> float:
        if not self.interval:
            return 0.0
        due = self.start + self.sent * self.interval
        self.sent += 1
        return max(0.0, (due - time.monotonic_ns()) / 1e9)


class Driver(Protocol):
    """How a benchmark talks to one kind of broker; each method runs in its own process."""

    @staticmethod
    def setup(opts: BenchOptions) -> None: ...
    @staticmethod
    def teardown(opts: BenchOptions) -> None: ...
    @staticmethod
    def produce(opts: BenchOptions, stats: Stats) -> None: ...
    @staticmethod
    def consume(opts: BenchOptions, queues: list[str], stats: Stats) -> None: ...


class MQRouteDriver:
    """The mqroute SDK: pipelined publishes with a confirm window, push consumers."""

    @staticmethod
    def setup(opts: BenchOptions) -> None:
        import trio

        trio.run(_mqroute_setup, opts)

    @staticmethod
    def teardown(opts: BenchOptions) -> None:
        import trio

        trio.run(_mqroute_teardown, opts)

    @staticmethod
    def produce(opts: BenchOptions, stats: Stats) -> None:
        import trio

        trio.run(_mqroute_produce, opts, stats)

    @staticmethod
    def consume(opts: BenchOptions, queues: list[str], stats: Stats) -> None:
        import trio

        trio.run(_mqroute_consume, opts, queues, stats)


async def _mqroute_setup(opts: BenchOptions) -> None:
    from ..client.connection import connect
    from ..errors import ConnectionClosed

    try:
        conn_cm = connect(opts.url, client_name="bench setup")
        conn = await conn_cm.__aenter__()
    except (OSError, ConnectionClosed) as exc:
        raise BenchError(
            f"cannot reach a broker at {parse_url(opts.url).shown} ({exc}); start one with "
            "`mqroute server`"
        ) from None
    try:
        exchange = opts.exchange_name
        if exchange and not exchange.startswith("amq."):
            await conn.declare_exchange(exchange, opts.exchange_type, durable=opts.persistent)
        for name in opts.queue_names:
            await conn.declare_queue(name, durable=opts.persistent)
            await conn.purge_queue(name)
            if exchange:
                key = opts.binding_key(name)
                args = {"x-match": "all", "bench": key} if opts.exchange_type == "headers" else {}
                await conn.bind_queue(name, exchange, key, arguments=args)
    finally:
        await conn_cm.__aexit__(None, None, None)


async def _mqroute_teardown(opts: BenchOptions) -> None:
    from ..client.connection import connect

    async with connect(opts.url, client_name="bench teardown") as conn:
        for name in opts.queue_names:
            await conn.delete_queue(name)
        exchange = opts.exchange_name
        if exchange and not exchange.startswith("amq."):
            await conn.delete_exchange(exchange)


async def _mqroute_produce(opts: BenchOptions, stats: Stats) -> None:
    import trio

    from ..client.connection import connect
    from ..model import Properties

    exchange = opts.exchange_name
    keys = opts.routing_keys
    body = make_body(opts.size)
    limiter = RateLimiter(opts.rate)
    window = trio.Semaphore(opts.window)
    in_flight: deque[tuple[int, Any]] = deque()
    more = trio.Event()
    props = [
        Properties(
            persistent=opts.persistent,
            headers={"bench": key} if opts.exchange_type == "headers" else None,
        )
        for key in keys
    ]

    async with connect(opts.url, client_name=f"bench producer {stats.index}") as conn:

        async def confirmer() -> None:
            # One wake-up per batch: a multiple confirm settles many at once.
            nonlocal more
            while True:
                if not in_flight:
                    await more.wait()
                    more = trio.Event()
                    continue
                sent_ns, confirmation = in_flight[0]
                await confirmation.wait()
                now = time.monotonic_ns()
                while in_flight and in_flight[0][1].done:
                    sent_ns, _ = in_flight.popleft()
                    stats.latency.add(now - sent_ns)
                    window.release()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(confirmer)
            n = 0
            while not stats.stop and (opts.count is None or n < opts.count):
                try:
                    window.acquire_nowait()
                except trio.WouldBlock:
                    await window.acquire()
                pause = limiter.delay()
                if pause:
                    await trio.sleep(pause)
                i = n % len(keys)
                confirmation = await conn._send_publish(
                    exchange, keys[i], body(), False, props[i], {}
                )
                in_flight.append((time.monotonic_ns(), confirmation))
                more.set()
                stats.sent()
                n += 1
            while in_flight:
                await trio.sleep(0.001)
            nursery.cancel_scope.cancel()


async def _mqroute_consume(opts: BenchOptions, queues: list[str], stats: Stats) -> None:
    import trio

    from ..client.connection import connect

    every = opts.multi_ack_every

    async def one(queue: str, task_status: Any) -> None:
        # A connection per queue, as a channel per queue in AMQP: delivery tags (and so
        # multiple acks) are per connection.
        async with (
            connect(opts.url, client_name=f"bench consumer {stats.index}") as conn,
            conn.consume(queue, prefetch=opts.prefetch, auto_ack=opts.auto_ack) as messages,
        ):
            task_status.started()
            n = 0
            async for msg in messages:
                stats.received(msg.body)
                if opts.auto_ack:
                    continue
                n += 1
                if every <= 1:
                    await msg.ack()
                elif n % every == 0:
                    await msg.ack(multiple=True)

    async with trio.open_nursery() as nursery:
        for queue in queues:
            await nursery.start(one, queue)
        stats.ready()
        while not stats.stop:
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


# --- the parent: start workers, show progress, collect results ----------------------------------


def _worker(
    driver: type[Driver],
    role: str,
    index: int,
    opts: BenchOptions,
    queues: list[str],
    out: Any,
    stop: Any,
) -> None:
    stats = Stats(out, role, index)
    done = threading.Event()

    def ticker() -> None:
        while not done.wait(TICK_SECONDS / 5):
            if stop.is_set():
                stats.stop = True
            out.put(("tick", role, index, stats.count))

    threading.Thread(target=ticker, daemon=True).start()
    try:
        if role == "producer":
            driver.produce(opts, stats)
        else:
            driver.consume(opts, queues, stats)
    except BaseException as exc:  # reported, then re-raised so the exit code says so too
        out.put(("failed", role, index, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        done.set()
    out.put(("done", role, index, stats.result()))


@attrs.define
class _Worker:
    role: str
    index: int
    process: multiprocessing.process.BaseProcess
    count: int = 0
    result: dict[str, Any] | None = None


def run(
    opts: BenchOptions,
    driver: type[Driver] = MQRouteDriver,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one benchmark; returns the results as a JSON-ready dict. Raises BenchError."""
    opts.check()
    driver.setup(opts)
    try:
        return _run(opts, driver, progress)
    finally:
        driver.teardown(opts)


def _run(
    opts: BenchOptions, driver: type[Driver], progress: Callable[[str], None] | None
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    stop_producers, stop_consumers = ctx.Event(), ctx.Event()
    workers: dict[tuple[str, int], _Worker] = {}

    def start(role: str, index: int, queues: list[str], stop: Any) -> None:
        process = ctx.Process(
            target=_worker,
            args=(driver, role, index, opts, queues, out, stop),
            name=f"bench {role} {index}",
            daemon=True,
        )
        process.start()
        workers[role, index] = _Worker(role, index, process)

    def receive(timeout: float) -> tuple[str, str, int, Any] | None:
        try:
            message: tuple[str, str, int, Any] = out.get(timeout=timeout)
        except stdlib_queue.Empty:
            for w in workers.values():
                if w.result is None and w.process.exitcode not in (None, 0):
                    raise BenchError(
                        f"{w.role} {w.index} died with exit code {w.process.exitcode}"
                    ) from None
            return None
        kind, role, index, payload = message
        worker = workers[role, index]
        if kind == "tick":
            worker.count = payload
        elif kind == "done":
            worker.result = payload
            worker.count = payload["count"]
        elif kind == "failed":
            raise BenchError(f"{role} {index} failed: {payload}")
        return message

    try:
        for i in range(opts.consumers):
            start("consumer", i, opts.queues_for(i), stop_consumers)
        ready = 0
        deadline = time.monotonic() + 30
        while ready < opts.consumers:
            if time.monotonic() > deadline:
                raise BenchError("consumers did not subscribe within 30 s")
            message = receive(0.2)
            if message and message[0] == "ready":
                ready += 1
        for i in range(opts.producers):
            start("producer", i, [], stop_producers)
        return _watch(opts, workers, receive, stop_producers, stop_consumers, progress)
    finally:
        stop_producers.set()
        stop_consumers.set()
        for w in workers.values():
            w.process.join(10)
            if w.process.is_alive():
                w.process.kill()


def _watch(
    opts: BenchOptions,
    workers: dict[tuple[str, int], _Worker],
    receive: Callable[[float], Any],
    stop_producers: Any,
    stop_consumers: Any,
    progress: Callable[[str], None] | None,
) -> dict[str, Any]:
    producers = [w for w in workers.values() if w.role == "producer"]
    consumers = [w for w in workers.values() if w.role == "consumer"]
    started = time.monotonic()
    last_report, last_sent, last_received = started, 0, 0
    last_progress_at, last_progress = started, 0
    while True:
        receive(0.1)
        now = time.monotonic()
        sent = sum(w.count for w in producers)
        received = sum(w.count for w in consumers)
        if opts.time is not None and now - started >= opts.time:
            stop_producers.set()
            if not producers:
                break
        producers_done = all(w.result is not None for w in producers)
        if producers_done:
            if not consumers or (received >= sent * opts.copies and opts.producers):
                break
            if received != last_progress:
                last_progress, last_progress_at = received, now
            elif now - last_progress_at > DRAIN_IDLE_SECONDS:
                break
        if progress and now - last_report >= 1.0:
            span = now - last_report
            progress(
                f"{now - started:6.1f} s   sent {(sent - last_sent) / span:10,.0f} msg/s   "
                f"received {(received - last_received) / span:10,.0f} msg/s   "
                f"total {sent:,} / {received:,}"
            )
            last_report, last_sent, last_received = now, sent, received
    stop_consumers.set()
    deadline = time.monotonic() + 15
    while any(w.result is None for w in workers.values()):
        if time.monotonic() > deadline:
            raise BenchError("workers did not finish within 15 s of being told to stop")
        receive(0.1)
    return summarise(opts, producers, consumers)


def _span_rate(results: list[dict[str, Any]], start_ns: int | None = None) -> float:
    active = [r for r in results if r["count"]]
    if not active:
        return 0.0
    first = start_ns if start_ns is not None else min(r["first_ns"] for r in active)
    span = (max(r["last_ns"] for r in active) - first) / 1e9
    total = sum(r["count"] for r in active)
    return total / span if span > 0 else math.inf


def summarise(
    opts: BenchOptions, producers: list[_Worker], consumers: list[_Worker]
) -> dict[str, Any]:
    p = [w.result for w in producers if w.result]
    c = [w.result for w in consumers if w.result]
    confirm, e2e = Histogram(), Histogram()
    for r in p:
        confirm.merge(Histogram.from_wire(r["latency"]))
    for r in c:
        e2e.merge(Histogram.from_wire(r["latency"]))
    published = sum(r["count"] for r in p)
    consumed = sum(r["count"] for r in c)
    first_publish = min((r["first_ns"] for r in p if r["count"]), default=None)
    return {
        "options": attrs.asdict(opts),
        "published": published,
        "consumed": consumed,
        "expected": published * opts.copies if consumers else 0,
        "publish_rate": _span_rate(p),
        "consume_rate": _span_rate(c),
        # What the issue calls the end-to-end rate: first publish to last delivery.
        "end_to_end_rate": _span_rate(c, first_publish) if p else _span_rate(c),
        "confirm_latency_ms": confirm.summary_ms(),
        "latency_ms": e2e.summary_ms(),
    }


def format_result(result: dict[str, Any]) -> str:
    """The human-readable report printed at the end of ``mqroute bench``."""
    lines = [
        f"{'':<14}{'messages':>12}{'msg/s':>12}",
        f"{'published':<14}{result['published']:>12,}{result['publish_rate']:>12,.0f}",
        f"{'consumed':<14}{result['consumed']:>12,}{result['consume_rate']:>12,.0f}",
        f"{'end to end':<14}{'':>12}{result['end_to_end_rate']:>12,.0f}",
    ]
    if result["expected"] and result["consumed"] < result["expected"]:
        lines.append(f"(expected {result['expected']:,} deliveries; some never arrived)")
    lines.append("")
    lines.append(f"{'latency (ms)':<14}" + "".join(f"{h:>9}" for h in LATENCY_COLUMNS))
    for label, key in (("confirm", "confirm_latency_ms"), ("end to end", "latency_ms")):
        row = result[key]
        if row:
            lines.append(f"{label:<14}" + "".join(f"{row[h]:>9.3f}" for h in LATENCY_COLUMNS))
    return "\n".join(lines)


LATENCY_COLUMNS = ("min", "p50", "p75", "p95", "p99", "max")
