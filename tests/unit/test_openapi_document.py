"""The OpenAPI document served at /docs says what the server does: the success statuses, the
`{"error": ...}` body, the bearer token, and the ingest body from the catalog."""

from __future__ import annotations

import json
import warnings

import jsonschema
import pytest
from litestar.testing import TestClient
from openapi_spec_validator import validate

from events.catalog import ALL_TYPES
from events.validation import InvalidEvent, parse_event
from services.api.app import create_app
from tests.unit.test_validation import VALID, WON, _with

EXTERNAL = {cls.__struct_config__.tag for cls in ALL_TYPES if not cls.internal}
INTERNAL = {cls.__struct_config__.tag for cls in ALL_TYPES if cls.internal}
INGEST = "/v1/workspaces/{ws}/events"


@pytest.fixture(scope="module")
def openapi() -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Litestar's deprecation notes about parameter styles
        app = create_app(lambda: None)
    # Served as /docs serves it (the app is not started: the route needs no services).
    answer = TestClient(app).get("/docs/openapi.json")
    assert answer.status_code == 200
    return answer.json()


def operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "delete", "patch"):
                yield method, path, operation


def test_the_openapi_document_is_valid_and_docs_render(openapi):
    validate(openapi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert TestClient(create_app(lambda: None)).get("/docs").status_code == 200


def test_success_statuses_are_those_the_routes_answer(openapi):
    success = {(method, path): sorted(code for code in op["responses"] if code < "300")
               for method, path, op in operations(openapi)}
    assert success[("post", INGEST)] == ["200"]
    assert success[("post", "/v1/workspaces")] == ["201"]
    assert success[("post", "/v1/workspaces/{ws}/tokens")] == ["201"]
    assert success[("post", "/v1/workspaces/{ws}/webhooks")] == ["201"]
    assert success[("put", "/v1/workspaces/{ws}/rules")] == ["200"]
    assert success[("delete", "/v1/workspaces/{ws}/webhooks")] == ["204"]


def test_every_answer_with_a_body_has_its_schema(openapi):
    """An outside audit: nine operations (health, status, the audit trail, webhooks, rules, workspace
    and token creation) documented their answer as `{}`, so a generated client knew nothing of it."""
    for method, path, op in operations(openapi):
        for code, response in op["responses"].items():
            if code == "204":
                continue
            schema = response.get("content", {}).get("application/json", {}).get("schema")
            assert schema, (method, path, code)


def test_binary_mode_headers_are_declared_for_generated_clients(openapi):
    """An outside audit: binary mode's ce-* headers were prose only, so no generated client could
    send it."""
    declared = {p["name"]: p for p in openapi["paths"][INGEST]["post"]["parameters"] if p["in"] == "header"}
    assert {"ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time", "ce-subject", "Content-Encoding"} <= set(declared)
    assert not any(p["required"] for p in declared.values())  # structured mode sends none of them


def test_the_values_a_parameter_takes_are_documented(openapi):
    """An outside audit: a generated client sent values the server refuses, because the document
    gave no enum or bound the handlers check."""
    from projections import attribution
    from projections import followups
    from projections.ladder import CONTACT_STATUSES, STAGES
    from events.commands import ALERT_RULES

    def parameter(path: str, name: str) -> dict:
        return next(p for p in openapi["paths"][path]["get"]["parameters"] if p["name"] == name)["schema"]

    for _, path, op in operations(openapi):
        for p in op.get("parameters", []):
            if p["name"] == "ws":
                assert p["schema"]["pattern"] == "^[a-z0-9-]{1,64}$", path
    assert openapi["components"]["schemas"]["WorkspaceIn"]["properties"]["id"]["pattern"] == "^[a-z0-9-]{1,64}$"
    contacts = "/v1/workspaces/{ws}/contacts"
    assert parameter(contacts, "stage")["enum"] == list(STAGES)
    assert parameter(contacts, "status")["enum"] == list(CONTACT_STATUSES)
    assert parameter("/v1/workspaces/{ws}/followups", "status")["enum"] == list(followups.FOLLOWUP_STATUSES)
    assert parameter("/v1/workspaces/{ws}/alerts", "rule")["enum"] == list(ALERT_RULES)
    assert parameter("/v1/workspaces/{ws}/attribution", "model")["enum"] == list(attribution.MODELS)
    lookback = parameter("/v1/workspaces/{ws}/attribution", "lookback_days")
    assert (lookback["minimum"], lookback["maximum"]) == (0, 36_500)
    assert "snapshot" in parameter(contacts, "snapshot")["description"]
    assert "derived" in openapi["components"]["schemas"]["GoalView"]["required"]  # always there, null but for revenue


def test_every_query_parameter_says_what_it_takes_and_offers_no_null(openapi):
    """An outside audit (a fuzz of the document): `min_seq` was documented as integer or null, and
    `?min_seq=null` is refused; the cursors (`after`, `before`) and filters said nothing of what they take."""
    for method, path, op in operations(openapi):
        for p in op.get("parameters", []):
            if p["in"] == "query":
                assert p.get("description"), (method, path, p["name"])
                assert "null" not in json.dumps(p["schema"]), (method, path, p["name"])
    min_seq = next(p for p in openapi["paths"]["/v1/workspaces/{ws}/funnel"]["get"]["parameters"] if p["name"] == "min_seq")
    assert min_seq["schema"]["type"] == "integer"


def test_the_values_a_request_body_takes_are_documented(openapi):
    """An outside audit: a generated client made no token in 5,480 tries; the bodies' values were prose."""
    from events.commands import ALL_RULES
    from services.api.auth import SCOPES

    schemas = openapi["components"]["schemas"]
    scopes = schemas["TokenIn"]["properties"]["scopes"]
    assert (scopes["items"]["enum"], scopes["minItems"]) == (list(SCOPES), 1)
    assert schemas["RuleSettings"]["properties"]["disabled"]["items"]["enum"] == list(ALL_RULES)
    webhook = schemas["WebhookIn"]["properties"]
    assert (webhook["max_attempts"]["minimum"], webhook["max_attempts"]["maximum"]) == (1, 100)
    assert (webhook["timeout_seconds"]["minimum"], webhook["timeout_seconds"]["maximum"]) == (0.1, 20)
    backoff = webhook["backoff_seconds"]
    assert (backoff["minItems"], backoff["items"]["minimum"], backoff["items"]["maximum"]) == (1, 0, 86400)
    assert jsonschema.Draft202012Validator({"$ref": "#/components/schemas/WebhookIn", "components": openapi["components"]}
                                           ).is_valid({"url": "https://hooks.example/t", "backoff_seconds": [0, 5]})


def test_the_values_an_answer_holds_are_documented(openapi):
    """An outside audit: the answers' stages, statuses, rules and metrics were plain strings."""
    from events.catalog import GoalMetric
    from events.commands import ALERT_RULES, FOLLOWUP_RULES
    from projections.followups import FOLLOWUP_STATUSES
    from projections.ladder import CONTACT_STATUSES, STAGES
    from typing import get_args

    schemas = openapi["components"]["schemas"]

    def values(component: str, field: str) -> list:
        return schemas[component]["properties"][field]["enum"]

    assert values("ContactView", "stage") == [*STAGES, None]
    assert values("ContactView", "status") == list(CONTACT_STATUSES)
    assert schemas["ContactView"]["properties"]["reached"]["propertyNames"]["enum"] == list(STAGES)
    assert values("FunnelStage", "stage") == list(STAGES)
    assert values("FollowupView", "rule") == list(FOLLOWUP_RULES)
    assert values("FollowupView", "status") == list(FOLLOWUP_STATUSES)
    assert values("AlertView", "rule") == list(ALERT_RULES)
    assert values("GoalView", "metric") == list(get_args(GoalMetric))


def test_errors_are_documented_as_the_server_answers_them(openapi):
    error_body = openapi["components"]["schemas"]["ErrorBody"]
    assert error_body["required"] == ["error"] and set(error_body["properties"]) == {"error", "applied_seq"}
    for method, path, op in operations(openapi):
        for code, response in op["responses"].items():
            if code >= "400" and path != "/v1/health":  # health's 503 is its report
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
    assert "status_code" not in json.dumps(openapi["paths"])
    answers = {(method, path): set(op["responses"]) for method, path, op in operations(openapi)}
    assert answers[("post", INGEST)] == {"200", "400", "401", "403", "404", "413", "415", "503", "504"}
    assert answers[("get", "/v1/workspaces/{ws}/funnel")] == {"200", "400", "401", "403", "404", "503"}
    assert {"401", "403", "409"} <= answers[("post", "/v1/workspaces")]
    stale = openapi["paths"]["/v1/workspaces/{ws}/contacts/{contact}"]["get"]["responses"]["503"]
    assert "applied_seq" in stale["description"] and "Retry-After" in stale["description"]


def test_every_route_but_health_needs_the_bearer_token(openapi):
    scheme = openapi["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for method, path, op in operations(openapi):
        expected = None if path == "/v1/health" else [{"bearer": []}]
        assert op.get("security") == expected, (method, path)


def _event_validator(openapi: dict, ref: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": ref, "components": openapi["components"]})


def test_the_ingest_body_is_the_catalog(openapi):
    body = openapi["paths"][INGEST]["post"]["requestBody"]["content"]
    one = body["application/cloudevents+json"]["schema"]
    assert one == {"$ref": "#/components/schemas/CloudEvent"}
    assert body["application/cloudevents-batch+json"]["schema"]["items"] == one
    assert "application/json" in body  # binary mode
    cloud_event = openapi["components"]["schemas"]["CloudEvent"]
    assert set(cloud_event["discriminator"]["mapping"]) == EXTERNAL
    offered = {openapi["components"]["schemas"][alt["$ref"].rsplit("/", 1)[1]]["properties"]["type"]["enum"][0]
               for alt in cloud_event["anyOf"]}
    assert offered == EXTERNAL
    assert not any(tag in json.dumps(openapi) for tag in INTERNAL)
    # The catalog's own details: required data fields, enums, amounts as numbers or numeric strings.
    schemas = openapi["components"]["schemas"]
    assert schemas["DealWonData"]["required"] == ["deal_id", "amount", "currency"]
    assert {"type": "number", "minimum": 0} in schemas["DealWonData"]["properties"]["amount"]["anyOf"]
    assert set(schemas["EngagedData"]["properties"]["action"]["enum"]) == {
        "view", "open", "visit", "like", "comment", "share", "click", "reply"}
    assert "subject" in schemas["SalesDealWon"]["required"]


def test_the_ingest_body_schema_agrees_with_validation(openapi):
    one = _event_validator(openapi, "#/components/schemas/CloudEvent")
    batch = openapi["paths"][INGEST]["post"]["requestBody"]["content"]["application/cloudevents-batch+json"]
    for body in VALID:
        one.validate(body)
    jsonschema.Draft202012Validator({**batch["schema"], "components": openapi["components"]}).validate(VALID)
    # A goal's target is above 0 in both (an outside audit: the schema said `minimum: 0`).
    goal = next(body for body in VALID if body["type"] == "touchline.goal.set")
    for target, accepted in ((0, False), ("0", False), ("0.00", False), ("0e3", False), ("0.5", True), (7, True),
                             ("1e-3", True)):
        body = _with(goal, data__target=target)
        assert one.is_valid(body) == accepted, target
        try:
            parse_event(json.dumps(body).encode())
            parsed = True
        except InvalidEvent:
            parsed = False
        assert parsed == accepted, target
    # What validation refuses (tests/unit/test_validation.py, INVALID) and a JSON Schema can say.
    for changes in ({"data__amount": "ten"}, {"data__amount": -1}, {"data__amount": "NaN"}, {"data__amount": "+5"},
                    {"data__currency": "eur"}, {"data__deal_id": ...}, {"subject": ...}, {"specversion": "0.3"},
                    {"id": ""}, {"source": ...}, {"type": "touchline.sales.deal.stolen"}, {"type": ...},
                    {"type": "touchline.followup.requested"}, {"datacontenttype": "text/xml"}):
        assert not one.is_valid(_with(WON, **changes)), changes
    assert one.is_valid(_with(WON, datacontenttype="Application/JSON; charset=utf-8"))


def test_an_operator_route_example_says_the_operator_token_is_needed(openapi):
    examples = openapi["paths"]["/v1/workspaces"]["post"]["responses"]["403"]["content"]["application/json"]["examples"]
    assert [example["value"] for example in examples.values()] == [{"error": "this needs the operator's admin token"}]


def test_retry_after_and_the_parameters_bounds_are_documented(openapi):
    """A client generated from the document knew neither that a 503 says when to ask again nor
    the range of min_seq, wait_ms and limit (an outside schemathesis run sent them out of range)."""
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            for status in ("503", "504"):
                if status in operation["responses"]:
                    assert "Retry-After" in operation["responses"][status].get("headers", {}), (method, path, status)
    parameters = {p["name"]: p["schema"] for p in openapi["paths"]["/v1/workspaces/{ws}/contacts"]["get"]["parameters"]}
    assert (parameters["min_seq"]["minimum"], parameters["min_seq"]["maximum"]) == (0, 2**63 - 1)
    assert (parameters["wait_ms"]["minimum"], parameters["wait_ms"]["maximum"]) == (0, 60_000)
    assert (parameters["limit"]["minimum"], parameters["limit"]["maximum"]) == (1, 1000)


def test_request_bodies_say_what_their_fields_take(openapi):
    """A client generated from the document could not make a token or a webhook (an outside fuzz:
    none of 5,480 token creations succeeded): what the handlers check, the document now says."""
    schemas = openapi["components"]["schemas"]
    from events.commands import ALL_RULES
    from services.api.auth import SCOPES

    assert all(scope in schemas["TokenIn"]["properties"]["scopes"]["description"] for scope in SCOPES)
    assert all(rule in schemas["RuleSettings"]["properties"]["disabled"]["description"] for rule in ALL_RULES)
    webhook = schemas["WebhookIn"]["properties"]
    assert [webhook[name]["description"] for name in ("max_attempts", "timeout_seconds")] == ["1 to 100.", "0.1 to 20."]
