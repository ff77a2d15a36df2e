"""What the server answers is what its OpenAPI document says: real answers of every operation with a
body, validated against the schema the served document gives for their status."""

from __future__ import annotations

import re

import jsonschema

from tests.support import event


def validator_for(document: dict):
    paths = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path) for path in document["paths"]]

    def check(method: str, answer) -> None:
        url_path = answer.request.url.path
        template = next(path for pattern, path in paths if pattern.match(url_path))
        response = document["paths"][template][method]["responses"][str(answer.status_code)]
        schema = {**response["content"]["application/json"]["schema"], "components": document["components"]}
        jsonschema.validate(answer.json(), schema)

    return check


def test_real_answers_match_the_documented_schemas(stack):
    check = validator_for(stack.http.get("/docs/openapi.json").json())
    admin = stack.admin()
    ws, auth = stack.new_workspace()
    base = f"/v1/workspaces/{ws}"
    sent = stack.send(ws, auth, [
        event("marketing.campaign.launched", campaign_id="spring", channel="ads", cost=None),
        event("marketing.engaged", "dana", channel="ads", action="click", campaign_id="spring"),
        event("sales.deal.won", "dana", deal_id="d1", amount="12.50", currency="EUR"),
    ])
    check("post", sent)
    seq = sent.json()["last_seq"]
    answers = [
        ("get", stack.http.get("/v1/health")),
        ("post", stack.http.post("/v1/workspaces", json={"id": f"{ws}-2"}, headers=admin)),
        ("post", stack.http.post(f"{base}/tokens", json={"scopes": ["read"]}, headers=admin)),
        ("get", stack.get(f"{base}/tokens", admin)),
        ("get", stack.get("/v1/status", admin, min_seq=seq)),
        ("get", stack.get(f"{base}/contacts/dana", auth, min_seq=seq)),
        ("get", stack.get(f"{base}/contacts/dana/events", auth, min_seq=seq)),
        ("get", stack.get(f"{base}/contacts", auth)),
        ("get", stack.get(f"{base}/funnel", auth)),
        ("get", stack.get(f"{base}/touches", auth)),
        ("get", stack.get(f"{base}/goals", auth)),
        ("get", stack.get(f"{base}/attribution", auth)),
        ("get", stack.get(f"{base}/rejected", auth)),
        ("get", stack.get(f"{base}/followups", auth)),
        ("get", stack.get(f"{base}/alerts", auth)),
        ("post", stack.http.post(f"{base}/webhooks", json={"url": "http://127.0.0.1:9/hook"}, headers=admin)),
        ("get", stack.get(f"{base}/webhooks", admin)),
        ("put", stack.http.put(f"{base}/rules", json={"disabled": ["warm-unworked"]}, headers=admin)),
        ("get", stack.get(f"{base}/rules", auth)),
        ("get", stack.get(f"{base}/contacts/nobody", auth)),  # and an error
    ]
    revoked = stack.http.delete(f"{base}/tokens/{answers[2][1].json()['id']}", headers=admin)
    for method, answer in [*answers, ("delete", revoked)]:
        assert answer.status_code < 300 or answer.status_code == 404, (answer.request.url, answer.text)
        check(method, answer)
    assert answers[-1][1].status_code == 404
