"""The AsyncAPI description of the NATS side (`touchline asyncapi`): the inbox channel carries the
catalog's events, and the server is the configured NATS, or an example said to be one."""

from __future__ import annotations

import json

import jsonschema

from events.catalog import ALL_TYPES
from services.cli.followups import advertised_nats_url
from services.dispatcher.app import describe
from services.settings import Settings
from tests.unit.test_validation import VALID, WON, _with

EXTERNAL = {cls.__struct_config__.tag for cls in ALL_TYPES if not cls.internal}


def _asyncapi(nats_url: str | None) -> dict:
    return describe(nats_url).schema.to_specification().to_jsonable()


def test_the_inbox_channel_carries_the_catalog():
    document = _asyncapi(None)
    (channel,) = [c for c in document["channels"].values() if c["address"] == "touchline.in.{workspace}"]
    (message_ref,) = [m["$ref"] for m in channel["messages"].values()]
    message = document["components"]["messages"][message_ref.rsplit("/", 1)[1].replace("%7B", "{").replace("%7D", "}")]
    payload = document["components"]["schemas"][message["payload"]["$ref"].rsplit("/", 1)[1]]
    assert payload["title"] == "CloudEvent"
    assert {alt["properties"]["type"]["enum"][0] for alt in payload["anyOf"]} == EXTERNAL
    validator = jsonschema.Draft202012Validator(payload)
    for body in VALID:
        validator.validate(body)
    assert not validator.is_valid(_with(WON, type="touchline.alert.raised"))


def test_the_asyncapi_server_is_the_configured_nats_or_an_example(tmp_path, monkeypatch):
    configured = _asyncapi("nats://producer:secret@nats.acme.internal:4222")["servers"]
    assert [server["host"] for server in configured.values()] == ["nats.acme.internal:4222"]
    assert "secret" not in json.dumps(configured)
    assert not any("description" in server for server in configured.values())
    (example,) = _asyncapi(None)["servers"].values()
    assert "example address" in example["description"]

    monkeypatch.delenv("TOUCHLINE_NATS_URL", raising=False)
    assert advertised_nats_url(Settings.from_env(data_dir=tmp_path)) is None
    (tmp_path / "nats").mkdir()
    (tmp_path / "nats" / "address").write_text("nats://127.0.0.1:40001\n")
    assert advertised_nats_url(Settings.from_env(data_dir=tmp_path)) == "nats://127.0.0.1:40001"
    monkeypatch.setenv("TOUCHLINE_NATS_URL", "nats://u:p@a:4222,nats://b:4222")
    assert advertised_nats_url(Settings.from_env(data_dir=tmp_path)) == "nats://a:4222,nats://b:4222"


def _payload_of(document: dict, address: str) -> dict:
    (channel,) = [c for c in document["channels"].values() if c["address"] == address]
    (message_ref,) = [m["$ref"] for m in channel["messages"].values()]
    message = document["components"]["messages"][message_ref.rsplit("/", 1)[1].replace("%7B", "{").replace("%7D", "}")]
    return document["components"]["schemas"][message["payload"]["$ref"].rsplit("/", 1)[1]]


def test_the_work_queue_and_dead_letters_carry_the_commands():
    """An outside audit: the command channel's payload was `{"type": "object"}`, so nothing said what
    a follow-up or alert command holds."""
    import datetime as dt

    from events.commands import RaiseAlert, RequestFollowup, encode_command

    document = _asyncapi(None)
    payload = _payload_of(document, "touchline.cmd.>")
    assert payload["title"] == "Command"
    assert _payload_of(document, "touchline.deadletter.{workspace}") == payload
    now = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    commands = [
        RequestFollowup(command_id="cmd_1", workspace="acme", followup_id="fu_1", contact="dana", rule="warm-unworked",
                        reason="Dana commented", due_at=now, trigger_time=now, caused_by_source="/ig", caused_by_id="e1",
                        issued_at=now),
        RaiseAlert(command_id="cmd_2", workspace="acme", alert_id="al_1", rule="goal-at-risk", reason="behind",
                   at=now, goal_id="nov", issued_at=now),
    ]
    validator = jsonschema.Draft202012Validator(payload)
    for command in commands:
        validator.validate(json.loads(encode_command(command)))
    broken = json.loads(encode_command(commands[0]))
    del broken["followup_id"]
    assert not validator.is_valid(broken)
    assert not validator.is_valid({**json.loads(encode_command(commands[1])), "command": "touchline.cmd.other"})


def test_the_description_says_how_a_producer_connects():
    """An outside audit: no security scheme, so the user, password and inbox prefix a producer needs
    were only in a channel's prose."""
    for url in (None, "nats://nats.acme.internal:4222"):
        document = _asyncapi(url)
        (scheme,) = document["components"]["securitySchemes"].values()
        assert scheme["type"] == "userPassword" and "inbox_prefix" in scheme["description"]
        (server,) = document["servers"].values()
        assert server["security"] == [{"$ref": "#/components/securitySchemes/nats-user-password"}]
        assert "PASSWORD" not in json.dumps(document)
