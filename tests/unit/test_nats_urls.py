"""TOUCHLINE_NATS_URL: the servers connected to, the credentials given to every one of them, and
the URL as logs and the CLI show it (one reading of the URL for all three)."""

from __future__ import annotations

from services.nats_io import nats_connection
from services.runtime.nats_auth import without_credentials


def test_a_cluster_url_gives_its_servers_and_the_first_credentials_to_every_server():
    url = "nats://touchline:p%40ss%3Aword@10.0.0.1:4222, nats://other:x@10.0.0.2:4222,,nats://10.0.0.3:4222"
    servers, credentials = nats_connection(url)
    assert servers == ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"]
    assert credentials == {"user": "touchline", "password": "p@ss:word"}


def test_a_token_or_no_credentials():
    assert nats_connection("nats://s3cret@127.0.0.1:4222") == (["nats://127.0.0.1:4222"], {"token": "s3cret"})
    assert nats_connection("nats://127.0.0.1:4222") == (["nats://127.0.0.1:4222"], {})


def test_the_url_shown_is_the_servers_connected_to_without_any_secret():
    url = "nats://touchline:p%40ss@10.0.0.1:4222,nats://tok@10.0.0.2:4222, nats://10.0.0.3:4222"
    assert without_credentials(url) == "nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222"
