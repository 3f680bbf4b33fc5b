"""core/confirms.py: publishes numbered in, outcomes out in order, runs of acks coalesced."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mqroute.core.confirms import Confirms
from mqroute.model import Confirmed


def test_publishes_are_numbered_from_one() -> None:
    confirms = Confirms()
    assert [confirms.begin() for _ in range(3)] == [1, 2, 3]
    assert len(confirms) == 3


def test_a_run_of_acks_is_one_multiple_confirm() -> None:
    confirms = Confirms()
    for _ in range(3):
        confirms.settle(confirms.begin(), ok=True)
    assert confirms.take() == [Confirmed(seq=3, multiple=True)]
    assert len(confirms) == 0


def test_a_nack_ends_the_run_and_names_why() -> None:
    confirms = Confirms()
    seqs = [confirms.begin() for _ in range(3)]
    confirms.settle(seqs[0], ok=True)
    confirms.settle(seqs[1], ok=False, code="NOT_FOUND", text="no exchange 'x'")
    confirms.settle(seqs[2], ok=True)
    assert confirms.take() == [
        Confirmed(seq=1, multiple=True),
        Confirmed(
            seq=2, multiple=False, ok=False, error_code="NOT_FOUND", error_text="no exchange 'x'"
        ),
        Confirmed(seq=3, multiple=True),
    ]


def test_an_outcome_waits_for_every_earlier_one() -> None:
    confirms = Confirms()
    first, second = confirms.begin(), confirms.begin()
    assert confirms.settle(second, ok=True) is False  # the oldest is still open
    assert confirms.take() == []
    assert confirms.settle(first, ok=True) is True
    assert confirms.take() == [Confirmed(seq=2, multiple=True)]


@given(st.lists(st.booleans(), min_size=1, max_size=40), st.randoms())
def test_whatever_the_order_of_settling_every_seq_is_told_once_in_order(
    outcomes: list[bool], rnd: object
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    confirms = Confirms()
    seqs = [confirms.begin() for _ in outcomes]
    order = list(zip(seqs, outcomes, strict=True))
    rnd.shuffle(order)
    told: list[Confirmed] = []
    for seq, ok in order:
        confirms.settle(seq, ok=ok)
        told += confirms.take()
    covered: dict[int, bool] = {}
    low = 1
    for c in told:
        if c.multiple:
            for seq in range(low, c.seq + 1):
                assert seq not in covered
                covered[seq] = True
        else:
            assert c.seq == low and c.seq not in covered
            covered[c.seq] = c.ok
        low = c.seq + 1
    assert covered == dict(zip(seqs, outcomes, strict=True))
