"""/api/reports over real HTTP, with the in-process worker reproducing."""

import httpx

from tests.people import bearer
from tests.server.conftest import wait_job
from upstream.hub import Hub

NEVER = {"type": "exact", "value": "this exact sentence will not be generated"}


def test_file_reproduce_list_show_confirm(server: str, tiny_hub: Hub) -> None:
    body = {
        "model": "tiny",
        "prompt": "What is the capital of France?",
        "expected": NEVER,
        "tags": ["capitals"],
        "max_new_tokens": 5,
    }
    anonymous = httpx.post(f"{server}/api/reports", json=body)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{server}/api/reports").json()["reports"] == []  # nothing filed

    ana = bearer(tiny_hub, "ana", "reporter")
    # the first report filed loads the embedding model (to link similar reports): slow
    r = httpx.post(f"{server}/api/reports", json=body, headers=ana, timeout=120)
    assert r.status_code == 201, r.text
    filed = r.json()
    assert filed["created"] is True
    assert wait_job(server, filed["reproduction_job"])["state"] == "done"
    report = httpx.get(f"{server}/api/reports/{filed['id']}").json()
    assert report["status"] == "reproduced" and report["reporter"] == "ana"
    assert report["variants"][0]["output"] and report["variants"][0]["passed"] is False

    again = httpx.post(
        f"{server}/api/reports", json=body, headers=bearer(tiny_hub, "bo", "reporter")
    )
    assert again.json()["id"] == filed["id"] and again.json()["reproduction_job"] is None
    listed = httpx.get(f"{server}/api/reports", params={"tag": "capitals"}).json()["reports"]
    assert [x["id"] for x in listed] == [filed["id"]] and listed[0]["reporters"] == 2
    assert (
        httpx.get(f"{server}/api/reports", params={"status": "confirmed"}).json()["reports"] == []
    )

    r = httpx.post(f"{server}/api/reports/{filed['id']}/confirm")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = httpx.post(f"{server}/api/reports/{filed['id']}/confirm", headers=ana)
    assert r.status_code == 403 and "ana may not confirm" in r.json()["error"]["message"]
    for user in ("cy", "di"):
        r = httpx.post(
            f"{server}/api/reports/{filed['id']}/confirm",
            headers=bearer(tiny_hub, user, "reporter"),
        )
        assert r.status_code == 200 and r.json()["status"] == "reproduced"
    r = httpx.post(
        f"{server}/api/reports/{filed['id']}/confirm", headers=bearer(tiny_hub, "ed", "reporter")
    )
    assert r.json()["status"] == "confirmed"
    clusters = httpx.get(f"{server}/api/reports", params={"clusters": True}).json()
    assert clusters["clusters"][0]["reports"] == [filed["id"]]


def test_bad_reports_are_4xx_naming_the_field(server: str, tiny_hub: Hub) -> None:
    ana = bearer(tiny_hub, "ana", "reporter")
    cases = [
        ({"model": "tiny", "prompt": "x", "colour": 1}, 422, "colour: unknown field"),
        ({"model": "tiny"}, 422, "exactly one of prompt or messages"),
        ({"model": "nope", "prompt": "x"}, 404, "unknown model 'nope'"),
        (
            {"model": "tiny", "prompt": "x", "expected": {"type": "json", "schema": {"type": 7}}},
            422,
            "expected.schema",
        ),
        ({"model": "tiny", "prompt": "x" * 40_000}, 422, "limit is 32000"),
    ]
    for body, status, message in cases:
        r = httpx.post(f"{server}/api/reports", json=body, headers=ana)
        assert r.status_code == status and message in r.json()["error"]["message"], (body, r.text)
    assert httpx.get(f"{server}/api/reports").json()["reports"] == []
    r = httpx.post(f"{server}/api/reports/1/confirm", headers=ana)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.post(
        f"{server}/api/reports/1/close",
        json={"duplicate_of": [1]},
        headers=bearer(tiny_hub, "x", "reporter"),
    )
    assert r.status_code == 422 and "duplicate_of" in json_error(r), r.text
    assert httpx.get(f"{server}/api/reports/99").status_code == 404
    r = httpx.post(
        f"{server}/api/reports",
        json={"model": "tiny", "prompt": "x"},
        headers={"Authorization": "Bearer up_not-a-token"},
    )
    assert r.status_code == 401 and "unknown or revoked token" in r.json()["error"]["message"]


def json_error(r: httpx.Response) -> str:
    """The error's message and field, as one string to search."""
    error = r.json()["error"]
    return f"{error['message']} {error['field']}"


def test_a_body_that_is_not_an_object_is_a_json_error(server: str) -> None:
    r = httpx.post(f"{server}/api/reports", json=["not", "an", "object"])
    assert r.status_code == 422 and "error" in r.json()
