"""/api/suites, /api/evals and /api/leaderboard over real HTTP."""

import httpx

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
    assert listed["guard-tiny"]["kind"] == "guard"  # made when the model was imported

    anyone = httpx.get(f"{server}/api/suites/s").json()["case_list"]
    maintainer = next(iter(tiny_hub.settings.maintainer_names))
    full = httpx.get(f"{server}/api/suites/s", headers={"X-Upstream-User": maintainer}).json()[
        "case_list"
    ]
    hidden = [c for c in anyone if c["split"] == "heldout"]
    assert hidden and all(c == {"split": "heldout", "hidden": True} for c in hidden)
    assert all("prompt" in c for c in full)

    r = httpx.post(f"{server}/api/evals", json={"model": "tiny", "suite": "s", "max_new_tokens": 3})
    assert r.status_code == 202
    job_id = r.json()["job"]
    job = wait_job(server, job_id)
    assert job["state"] == "done", job["error"]
    assert job["result"]["metrics"]["all"]["n"] == 12
    board = httpx.get(f"{server}/api/leaderboard").json()["leaderboard"]
    assert board[0]["model"] == "tiny" and board[0]["all"]["rate"] == 0.0

    bad = httpx.post(f"{server}/api/evals", json={"model": "tiny", "suite": "nope"})
    assert bad.status_code == 404 and "unknown suite" in bad.json()["error"]
