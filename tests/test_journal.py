"""The journal: the batch being filled, numbered, and what a failed write leaves to retry."""

from __future__ import annotations

from mqroute.core.journal import Journal
from mqroute.model import Message, QueueSpec
from mqroute.records import DropQueue, PutMessage, PutQueue

MESSAGE = Message(exchange="", routing_key="q", body=b"x")


def test_batches_are_numbered_in_order_and_start_empty() -> None:
    journal = Journal()
    assert journal.number == 1 and len(journal) == 0
    journal.add(PutQueue(QueueSpec(name="q", durable=True)))
    batch = journal.take()
    assert batch.number == 1 and len(batch.records) == 1
    assert journal.number == 2 and len(journal) == 0


def test_a_failed_batch_of_messages_only_releases_its_waiters_at_once() -> None:
    journal = Journal()
    journal.add(PutMessage("q", 1, MESSAGE))
    failed = journal.take()
    assert journal.retry(failed) is True  # the publishes were nacked: nothing else to write
    assert len(journal) == 0


def test_a_failed_batch_keeps_its_other_records_in_front_of_the_next() -> None:
    journal = Journal()
    journal.add(PutQueue(QueueSpec(name="q", durable=True)))
    journal.add(PutMessage("q", 1, MESSAGE))
    failed = journal.take()
    journal.add(DropQueue("other"))
    assert journal.retry(failed) is False  # its waiters wait for the batch being filled
    assert journal.batch.records == [
        PutQueue(QueueSpec(name="q", durable=True)),
        DropQueue("other"),
    ]
    assert journal.number == failed.number + 1
