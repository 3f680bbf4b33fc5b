"""Durability: the records the broker asks to keep, and the stores that keep them.

The broker (core) never touches disk. It describes every change to durable state as a record
(``journal.py``); the server hands each scheduling round's records to a ``Store`` in one batch,
and only after ``write`` returns — the transaction committed and fsync'd — are the publishes in
that batch confirmed and the declarations in it answered.

``MemoryStore`` keeps nothing (an embedded or test broker). ``SqliteStore`` is the durable one:
stdlib sqlite3, WAL, ``synchronous=FULL``, one transaction per batch, called from one thread at a
time (the server's committer).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import cbor2

from ..errors import StoreError
from ..model import Binding, ExchangeSpec, Message, Properties, QueueSpec
from ..records import (
    DropBinding,
    DropExchange,
    DropMessages,
    DropQueue,
    ForgetSeen,
    HoldMessage,
    MarkDelivered,
    PutBinding,
    PutExchange,
    PutMessage,
    PutQueue,
    PutSeen,
    Record,
)

log = logging.getLogger("mqroute.store")

DB_NAME = "mqroute.db"
APPLICATION_ID = 0x6D717274  # "mqrt": marks the file as ours
SCHEMA_VERSION = 1


@attrs.frozen(kw_only=True)
class StoredMessage:
    """A stored message as recovery sees it: its body stays on disk until dispatch needs it."""

    seq: int
    size: int
    delivery_count: int
    expires_at: float | None
    priority: int | None
    ready_at: float | None


@attrs.frozen(kw_only=True)
class Snapshot:
    """Everything durable, as recovery needs it."""

    exchanges: list[ExchangeSpec]
    queues: list[QueueSpec]
    bindings: list[Binding]
    messages: Iterable[tuple[str, StoredMessage]]  # (queue, message), seq order; read lazily
    clean_shutdown: bool
    seen: list[tuple[str, str, str, float]] = attrs.Factory(list)  # dedup: kind, name, id, until


class Store(Protocol):
    def load(self) -> Snapshot:
        """Read everything back (at start)."""
        ...

    def write(self, records: Sequence[Record]) -> None:
        """Apply ``records`` atomically and durably; return only once they are on disk."""
        ...

    def read_messages(self, queue: str, seqs: list[int]) -> dict[int, Message]:
        """Bodies of stored messages (committed ones), for paging them back in."""
        ...

    def probe(self) -> None:
        """Write something small, or raise: after a failed write, whether writes work again."""
        ...

    def close(self) -> None:
        """Close cleanly (recovery then knows the shutdown was clean)."""
        ...


class MemoryStore:
    """Keeps nothing: for brokers whose state may vanish with the process."""

    def load(self) -> Snapshot:
        return Snapshot(exchanges=[], queues=[], bindings=[], messages=(), clean_shutdown=True)

    def write(self, records: Sequence[Record]) -> None:
        pass

    def read_messages(self, queue: str, seqs: list[int]) -> dict[int, Message]:
        raise KeyError(f"a memory store keeps no messages (queue {queue!r})")

    def probe(self) -> None:
        pass

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS exchanges (name TEXT PRIMARY KEY, spec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY, spec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS bindings (
    source TEXT NOT NULL, destination TEXT NOT NULL, kind TEXT NOT NULL,
    routing_key TEXT NOT NULL, arguments BLOB NOT NULL, key BLOB NOT NULL,
    PRIMARY KEY (kind, destination, key)
);
CREATE TABLE IF NOT EXISTS messages (
    queue TEXT NOT NULL, seq INTEGER NOT NULL, delivery_count INTEGER NOT NULL,
    expires_at REAL, priority INTEGER, ready_at REAL,
    exchange TEXT NOT NULL, routing_key TEXT NOT NULL, properties BLOB NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (queue, seq)
);
CREATE TABLE IF NOT EXISTS seen (
    kind TEXT NOT NULL, name TEXT NOT NULL, message_id TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (kind, name, message_id)
);
"""


class SqliteStore:
    """The durable store: one SQLite file in the data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / DB_NAME
        self._failed = False  # the last write failed: what is on disk may lack something
        self._marked_in_use = False  # clean_shutdown=0 is on disk (written with the first batch)
        existed = self.path.exists()
        try:
            # Owner only; SQLite gives its -wal and -shm files the database file's mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(self.path, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable mqroute database: {exc}") from None
        if existed and tables and app_id != APPLICATION_ID:
            raise StoreError(f"{self.path} is an SQLite database, but not mqroute's")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this mqroute reads up to "
                f"{SCHEMA_VERSION} (a newer mqroute wrote it)"
            )
        if app_id != APPLICATION_ID or version != SCHEMA_VERSION:  # a new database: no write
            try:  # otherwise, so that a start on a full disk works
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"cannot create the database {self.path}: {exc}") from None
        # Paging reads run on the event loop's thread while the writer thread commits: WAL
        # lets a second connection read committed rows without waiting for the writer.
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    # --- recovery --------------------------------------------------------------------------

    def load(self) -> Snapshot:
        db = self._db
        clean = db.execute("SELECT value FROM meta WHERE key='clean_shutdown'").fetchone()
        try:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('clean_shutdown', '0')")
            self._marked_in_use = True
        except sqlite3.OperationalError as exc:  # a full disk must not stop a start
            log.warning("cannot write to the store at start (%s); will retry with each write", exc)
        exchanges = [
            ExchangeSpec(**_load(spec)) for (spec,) in db.execute("SELECT spec FROM exchanges")
        ]
        queues = [QueueSpec(**_load(spec)) for (spec,) in db.execute("SELECT spec FROM queues")]
        bindings = [
            Binding(
                source=s, destination=d, destination_kind=k, routing_key=rk, arguments=_load(args)
            )
            for s, d, k, rk, args in db.execute(
                "SELECT source, destination, kind, routing_key, arguments FROM bindings"
            )
        ]
        rows = db.execute(
            "SELECT queue, seq, length(body), delivery_count, expires_at, priority, ready_at "
            "FROM messages ORDER BY queue, seq"
        )
        # A generator over the cursor: recovery never holds every row at once, nor any body.
        messages = (
            (
                queue,
                StoredMessage(
                    seq=seq,
                    size=size,
                    delivery_count=count,
                    expires_at=expires_at,
                    priority=priority,
                    ready_at=ready_at,
                ),
            )
            for queue, seq, size, count, expires_at, priority, ready_at in rows
        )
        seen = list(
            db.execute("SELECT kind, name, message_id, expires_at FROM seen ORDER BY expires_at")
        )
        return Snapshot(
            seen=seen,
            exchanges=exchanges,
            queues=queues,
            bindings=bindings,
            messages=messages,
            clean_shutdown=bool(clean and clean[0] == "1"),
        )

    # --- writing ---------------------------------------------------------------------------

    def write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            if not self._marked_in_use:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('clean_shutdown', '0')")
            for record in records:
                _APPLY[type(record)](db, record)
            db.execute("COMMIT")
        except BaseException:
            self._failed = True
            if db.in_transaction:  # SQLite may have rolled back already (a full disk)
                db.execute("ROLLBACK")
            raise
        self._failed = False
        self._marked_in_use = True

    def probe(self) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('clean_shutdown', '0')")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._failed = False
        self._marked_in_use = True

    def read_messages(self, queue: str, seqs: list[int]) -> dict[int, Message]:
        rows = self._reader.execute(
            "SELECT seq, exchange, routing_key, properties, body FROM messages "
            "WHERE queue = ? AND seq BETWEEN ? AND ?",
            (queue, min(seqs), max(seqs)),
        )
        return _messages(rows, seqs)

    def close(self) -> None:
        if not self._failed:
            try:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('clean_shutdown', '1')")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError as exc:
                log.warning(
                    "could not record a clean shutdown (%s): the next start recovers as after "
                    "a crash, marking messages redelivered; nothing is lost",
                    exc,
                )
        self._reader.close()
        self._db.close()


PAGE_FILE_NAME = "paging.db"


PAGE_FILE_SLACK = 16 * 1024 * 1024  # free bytes the page file keeps before giving them back


class PageFile:
    """Message bodies paged out under memory pressure (``paging.py``): a scratch SQLite file
    beside the store, emptied at every start and never fsync'd, because what it holds is
    transient (a restart loses transient messages anyway). Rows are keyed by a queue's uid,
    not its name: a name can be deleted and declared again while old rows wait to go.

    ``apply`` runs in a worker thread; ``read`` on the event loop while it does (WAL lets a
    second connection read committed rows without waiting for the writer).
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / PAGE_FILE_NAME
        self._remove_files()
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # Pages freed by deletes can be handed back to the system (give_back); it must be
            # set before the first table.
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")
            # A rowid table: rows arrive in order, so inserts append (a WITHOUT ROWID table
            # keyed by (queue, seq) moved its large rows around and was several times slower).
            self._db.execute(
                "CREATE TABLE pages (queue INTEGER NOT NULL, seq INTEGER NOT NULL, "
                "exchange TEXT NOT NULL, routing_key TEXT NOT NULL, properties BLOB NOT NULL, "
                "body BLOB NOT NULL)"
            )
            self._db.execute("CREATE UNIQUE INDEX pages_by_seq ON pages (queue, seq)")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot create the page file {self.path}: {exc}") from None
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._page_size = self._db.execute("PRAGMA page_size").fetchone()[0]

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def apply(
        self,
        out: Sequence[tuple[int, int, Message]],
        drop: Sequence[tuple[int, int]],
        drop_queues: Sequence[int],
    ) -> None:
        """Write ``out`` (queue uid, seq, message) and delete the rows named, in one go."""
        db = self._db
        encoded: dict[int, bytes] = {}  # by id(): messages mostly share a properties object
        rows = []
        for uid, seq, m in out:
            props = encoded.get(id(m.properties))
            if props is None:
                props = encoded[id(m.properties)] = _dump_properties(m.properties)
            rows.append((uid, seq, m.exchange, m.routing_key, props, m.body))
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO pages VALUES (?, ?, ?, ?, ?, ?)", rows)
            db.executemany("DELETE FROM pages WHERE queue = ? AND seq = ?", drop)
            db.executemany("DELETE FROM pages WHERE queue = ?", [(uid,) for uid in drop_queues])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if drop or drop_queues:
            self._give_back()

    def _give_back(self) -> None:
        """Hand the pages of deleted rows back to the system once there are many: a flood
        that was paged out and then deleted or purged must not keep its disk space (it
        counts against the disk everyone shares) until the next restart."""
        db = self._db
        free = db.execute("PRAGMA freelist_count").fetchone()[0] * self._page_size
        if free >= PAGE_FILE_SLACK:
            # executescript steps it to the end (execute would free one page)
            db.executescript("PRAGMA incremental_vacuum;")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL holds the moved pages

    def read(self, uid: int, seqs: list[int]) -> dict[int, Message]:
        rows = self._reader.execute(
            "SELECT seq, exchange, routing_key, properties, body FROM pages "
            "WHERE queue = ? AND seq BETWEEN ? AND ?",
            (uid, min(seqs), max(seqs)),
        )
        return _messages(rows, seqs)

    def close(self) -> None:
        self._reader.close()
        self._db.close()
        self._remove_files()


def _messages(rows: Iterable[tuple[Any, ...]], seqs: list[int]) -> dict[int, Message]:
    """Rows of (seq, exchange, routing_key, properties, body) as messages, those of ``seqs``
    only (the query reads the range between the smallest and the largest)."""
    wanted = set(seqs)
    return {
        seq: Message(
            exchange=exchange,
            routing_key=routing_key,
            body=body,
            properties=_load_properties(props),
        )
        for seq, exchange, routing_key, props, body in rows
        if seq in wanted
    }


def _dump(value: Any) -> bytes:
    return cbor2.dumps(value)


def _load(data: bytes) -> Any:
    return cbor2.loads(data)


def _load_properties(data: bytes) -> Properties:
    fields = _load(data)
    return Properties(**fields) if fields else Properties()


def _dump_properties(props: Properties) -> bytes:
    return _dump(
        {
            k: v
            for k, v in attrs.asdict(props, recurse=False).items()
            if v is not None and v is not False
        }
    )


def _put_exchange(db: sqlite3.Connection, r: PutExchange) -> None:
    db.execute(
        "INSERT OR REPLACE INTO exchanges VALUES (?, ?)", (r.spec.name, _dump(attrs.asdict(r.spec)))
    )


def _drop_exchange(db: sqlite3.Connection, r: DropExchange) -> None:
    db.execute("DELETE FROM exchanges WHERE name = ?", (r.name,))
    db.execute("DELETE FROM seen WHERE kind = 'exchange' AND name = ?", (r.name,))
    db.execute(
        "DELETE FROM bindings WHERE source = ? OR (kind = 'exchange' AND destination = ?)",
        (r.name, r.name),
    )


def _put_queue(db: sqlite3.Connection, r: PutQueue) -> None:
    db.execute(
        "INSERT OR REPLACE INTO queues VALUES (?, ?)", (r.spec.name, _dump(attrs.asdict(r.spec)))
    )


def _drop_queue(db: sqlite3.Connection, r: DropQueue) -> None:
    db.execute("DELETE FROM queues WHERE name = ?", (r.name,))
    db.execute("DELETE FROM messages WHERE queue = ?", (r.name,))
    db.execute("DELETE FROM seen WHERE kind = 'queue' AND name = ?", (r.name,))
    db.execute("DELETE FROM bindings WHERE kind = 'queue' AND destination = ?", (r.name,))


def _put_binding(db: sqlite3.Connection, r: PutBinding) -> None:
    b = r.binding
    db.execute(
        "INSERT OR REPLACE INTO bindings VALUES (?, ?, ?, ?, ?, ?)",
        (
            b.source,
            b.destination,
            b.destination_kind,
            b.routing_key,
            _dump(b.arguments),
            _dump([b.source, b.routing_key, b.arguments]),
        ),
    )


def _drop_binding(db: sqlite3.Connection, r: DropBinding) -> None:
    b = r.binding
    db.execute(
        "DELETE FROM bindings WHERE kind = ? AND destination = ? AND key = ?",
        (b.destination_kind, b.destination, _dump([b.source, b.routing_key, b.arguments])),
    )


def _put_message(db: sqlite3.Connection, r: PutMessage) -> None:
    m = r.message
    db.execute(
        "INSERT OR REPLACE INTO messages VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?)",
        (
            r.queue,
            r.seq,
            r.expires_at,
            m.properties.priority,
            r.ready_at,
            m.exchange,
            m.routing_key,
            _dump_properties(m.properties),
            m.body,
        ),
    )


def _drop_messages(db: sqlite3.Connection, r: DropMessages) -> None:
    db.executemany(
        "DELETE FROM messages WHERE queue = ? AND seq = ?", [(r.queue, seq) for seq in r.seqs]
    )


def _mark_delivered(db: sqlite3.Connection, r: MarkDelivered) -> None:
    db.execute(
        "UPDATE messages SET delivery_count = ? WHERE queue = ? AND seq = ?",
        (r.delivery_count, r.queue, r.seq),
    )


def _hold_message(db: sqlite3.Connection, r: HoldMessage) -> None:
    db.execute(
        "UPDATE messages SET ready_at = ? WHERE queue = ? AND seq = ?", (r.ready_at, r.queue, r.seq)
    )


def _put_seen(db: sqlite3.Connection, r: PutSeen) -> None:
    db.execute(
        "INSERT OR REPLACE INTO seen VALUES (?, ?, ?, ?)",
        (r.kind, r.name, r.message_id, r.expires_at),
    )


def _forget_seen(db: sqlite3.Connection, r: ForgetSeen) -> None:
    db.execute("DELETE FROM seen WHERE expires_at <= ?", (r.now,))


_APPLY: dict[type, Any] = {
    PutExchange: _put_exchange,
    DropExchange: _drop_exchange,
    PutQueue: _put_queue,
    DropQueue: _drop_queue,
    PutBinding: _put_binding,
    DropBinding: _drop_binding,
    PutMessage: _put_message,
    DropMessages: _drop_messages,
    MarkDelivered: _mark_delivered,
    HoldMessage: _hold_message,
    PutSeen: _put_seen,
    ForgetSeen: _forget_seen,
}
