"""Broker URLs (client/url.py): user, password and vhost as RabbitMQ's URLs carry them."""

from __future__ import annotations

import pytest

from mqroute.client.url import BrokerUrl, parse_url


def test_a_bare_url_is_guest_on_the_default_vhost() -> None:
    assert parse_url("mqroute://127.0.0.1") == BrokerUrl("127.0.0.1", 5680)


def test_user_password_and_vhost_are_percent_decoded() -> None:
    url = parse_url("mqroute://ali%40ce:p%3Ass%2Fw@broker:5700/team%2Fa")
    assert (url.user, url.password, url.vhost, url.port) == ("ali@ce", "p:ss/w", "team/a", 5700)


def test_mqroutes_is_tls_on_its_own_default_port() -> None:
    url = parse_url("mqroutes://u:p@broker")
    assert url.tls and url.port == 5681


def test_the_shown_url_has_no_password() -> None:
    url = parse_url("mqroute://alice:s3cret@broker:5680/staging")
    assert url.shown == "mqroute://alice@broker:5680/staging"
    assert "s3cret" not in repr(url)


@pytest.mark.parametrize("bad", ["amqp://u:s3cret@host", "mqroute://u:s3cret@host:notaport"])
def test_a_bad_url_is_refused_without_echoing_the_password(bad: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_url(bad)
    assert "s3cret" not in str(caught.value)
