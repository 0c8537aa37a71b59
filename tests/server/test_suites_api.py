"""/api/suites, /api/evals and /api/leaderboard over real HTTP."""

import httpx

from tests.people import bearer
from tests.server.conftest import wait_job
from upstream import suites
from upstream.hub import Hub

NEVER = {"type": "exact", "value": "this exact sentence will not be generated"}


def test_suites_evals_and_leaderboard(server: str, tiny_hub: Hub) -> None:
    cases = [
        suites.CaseIn([{"role": "user", "content": f"q {i}"}], NEVER, ["t"]) for i in range(12)
    ]
    suites.add_cases(tiny_hub, "s", cases, "tiny")
    listed = {x["name"]: x for x in httpx.get(f"{server}/api/suites").json()["suites"]}
    assert listed["s"]["cases"] == 12 and listed["s"]["kind"] == "community"
    assert listed["guard-tiny"]["kind"] == "guard"  # made by the import job

    contributor = bearer(tiny_hub, "bo", "contributor")
    anyone = httpx.get(f"{server}/api/suites/s").json()["case_list"]
    signed_in = httpx.get(f"{server}/api/suites/s", headers=contributor).json()["case_list"]
    maintainer = bearer(tiny_hub, "mia", "maintainer", model="tiny")
    full = httpx.get(f"{server}/api/suites/s", headers=maintainer).json()["case_list"]
    hidden = [c for c in anyone if c["split"] == "heldout"]
    assert hidden and all(c == {"split": "heldout", "hidden": True} for c in hidden)
    assert signed_in == anyone  # only a maintainer of the suite's model sees held-out cases
    assert all("prompt" in c for c in full)

    body = {"model": "tiny", "suite": "s", "max_new_tokens": 3}
    r = httpx.post(f"{server}/api/evals", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    reporter = bearer(tiny_hub, "ana", "reporter")
    r = httpx.post(f"{server}/api/evals", json=body, headers=reporter)
    assert r.status_code == 403 and "only a contributor" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/api/evals", json=body, headers=contributor)
    assert r.status_code == 202
    job_id = r.json()["job"]
    job = wait_job(server, job_id)
    assert job["state"] == "done", job["error"]
    assert job["result"]["metrics"]["all"]["n"] == 12
    # whole answers on request: none stopped at its verdict, every one generated again
    r = httpx.post(f"{server}/api/evals", json={**body, "full_outputs": True}, headers=contributor)
    full = wait_job(server, r.json()["job"])
    assert full["state"] == "done", full["error"]
    assert full["result"]["metrics"]["outputs"]["stopped_at_verdict"] == 0
    assert full["result"]["generated"] == job["result"]["metrics"]["outputs"]["stopped_at_verdict"]
    board = httpx.get(f"{server}/api/leaderboard").json()["leaderboard"]
    assert board[0]["model"] == "tiny" and board[0]["all"]["rate"] == 0.0

    bad = httpx.post(
        f"{server}/api/evals", json={"model": "tiny", "suite": "nope"}, headers=contributor
    )
    assert bad.status_code == 404 and "unknown suite" in bad.json()["error"]["message"]


def test_a_comparison_over_the_api_is_its_askers_to_read(tiny_hub: Hub) -> None:
    from tests.server.conftest import serve

    cases = [suites.CaseIn([{"role": "user", "content": f"q {i}"}], NEVER, ["t"]) for i in range(8)]
    suites.add_cases(tiny_hub, "s", cases, "tiny", heldout_percent=50)
    bo = bearer(tiny_hub, "bo", "contributor")
    admin = bearer(tiny_hub, "ada", "admin")
    body = {"base": "tiny", "candidate": "tiny", "suite": "s", "max_new_tokens": 2}
    with serve(tiny_hub) as url:  # no worker: the job is run below
        assert httpx.post(f"{url}/api/comparisons", json=body).status_code == 401
        bad = {**body, "candidate_adapters": ["/etc"]}
        r = httpx.post(f"{url}/api/comparisons", json=bad, headers=bo)
        assert r.status_code == 422 and "pr:N" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/api/comparisons", json=body, headers=bo)
        assert r.status_code == 202, r.text
        job = r.json()["job"]
        tiny_hub.jobs.run_now(job)
        mine = httpx.get(f"{url}/api/jobs/{job}", headers=bo).json()
        assert mine["state"] == "done" and mine["owner"] == "bo"
        split = mine["result"]["splits"]["all"]
        assert split["n"] == 8 and split["fixed_count"] == 0 and split["broken_count"] == 0
        assert httpx.get(f"{url}/api/jobs/{job}").json()["result"] is None  # not theirs
        other = bearer(tiny_hub, "cy", "contributor")
        assert httpx.get(f"{url}/api/jobs/{job}", headers=other).json()["result"] is None
        assert httpx.get(f"{url}/api/jobs/{job}", headers=admin).json()["result"] is not None


def test_suites_are_built_and_imported_over_the_api(tiny_hub: Hub) -> None:
    from tests.server.conftest import serve

    maintainer = bearer(tiny_hub, "mia", "maintainer", model="tiny")
    cases = {
        "model": "tiny",
        "cases": [
            {"prompt": "one?", "expected": NEVER, "tags": ["T"]},
            {"messages": [{"role": "user", "content": "two?"}], "expected": NEVER},
        ],
    }
    with serve(tiny_hub) as url:
        r = httpx.post(f"{url}/api/suites/imported/cases", json=cases, headers=maintainer)
        assert r.status_code == 200, r.text
        assert (r.json()["added"], r.json()["version"]) == (2, 1)
        bad = {"cases": [{"prompt": "x", "expected": {"type": "nope"}}]}
        r = httpx.post(f"{url}/api/suites/imported/cases", json=bad, headers=maintainer)
        assert r.status_code == 422 and "cases.0.expected" in r.json()["error"]["message"]
        r = httpx.post(
            f"{url}/api/suites/imported/cases",
            json={"cases": [{"prompt": "x", "expected": NEVER, "colour": 1}]},
            headers=maintainer,
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "cases.0.colour"
        r = httpx.post(
            f"{url}/api/suites/from-reports/build",
            json={"tag": "none-yet", "model": "tiny"},
            headers=maintainer,
        )
        assert r.status_code == 422, r.text  # nothing confirmed carries that tag yet
        assert "no confirmed report with tag 'none-yet'" in r.json()["error"]["message"]
        shown = httpx.get(f"{url}/api/suites/imported", headers=maintainer).json()
        assert {c["prompt"] for c in shown["case_list"]} == {"one?", "two?"}
