"""The AMQP port fed random input without a socket: after a good login, well-framed methods
with any argument values, contents right and wrong, flipped bytes, and plain random bytes.
Only the protocol's own errors may come of it (a channel or connection closed with AMQP's
code), never an exception from the broker. benchmarks/fuzz_amqp.py runs the same for long."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mqroute.core.vhost import Vhost

from .amqp_fuzz import drive, login_frames, random_frames

LOGIN = b"".join(login_frames())


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_frames_after_a_login_only_close_channels_and_connections(seed: int) -> None:
    drive(LOGIN + random_frames(random.Random(seed), 40))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_after_a_login_only_close_the_connection(data: bytes) -> None:
    drive(LOGIN + data)


def test_many_random_connections_share_one_vhost_without_harm() -> None:
    vhost = Vhost()
    rng = random.Random(2026)
    for _ in range(30):
        drive(LOGIN + random_frames(rng, 60), vhost=vhost)
    vhost.expire(now=1_700_000_000.0 + 3600)  # whatever they left behind still ages well
