"""/api/contributions over real HTTP: open, checks by the worker, review, bad input."""

import base64
import json
from pathlib import Path

import httpx

from tests.server.conftest import wait_job
from tests.test_contributions import make_adapter
from upstream.hub import Hub
from upstream.registry import materialize, resolve

DATASET = "\n".join(
    json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    for q, a in [("hi", "hello"), ("sky?", "blue")]
)


def test_open_check_and_review(server: str, tiny_hub: Hub, tmp_path: Path) -> None:
    bo = {"X-Upstream-User": "bo"}
    maintainer = {"X-Upstream-User": next(iter(tiny_hub.settings.maintainer_names))}
    with tiny_hub.session() as s:
        adapter = make_adapter(materialize(tiny_hub, resolve(s, "tiny")), tmp_path / "a")
    body = {
        "model": "tiny",
        "title": "a fix",
        "adapter": {
            "config": json.loads((adapter / "adapter_config.json").read_text()),
            "safetensors_base64": base64.b64encode(
                (adapter / "adapter_model.safetensors").read_bytes()
            ).decode(),
        },
    }
    r = httpx.post(f"{server}/api/contributions", json=body, headers=bo)
    assert r.status_code == 201, r.text
    opened = r.json()
    job = wait_job(server, opened["job"], timeout=120)
    assert job["state"] == "done", job["error"]
    shown = httpx.get(f"{server}/api/contributions/{opened['id']}").json()
    # it claims no report and so fixes none: the default policy fails it
    assert (shown["state"], shown["verdict"]) == ("failed", "failed")
    assert shown["checks"]["reasons"][0] == (
        "✗ claims no report; fixes 0 cases of the model's suites (at least 1 needed)"
    )
    assert shown["adapter_info"]["rank"] == 4
    listed = httpx.get(f"{server}/api/contributions", params={"model": "tiny"}).json()
    assert [c["id"] for c in listed["contributions"]] == [opened["id"]]

    own = httpx.post(f"{server}/api/contributions/{opened['id']}/approve", json={}, headers=bo)
    assert own.status_code == 403 and "only a maintainer" in own.json()["error"]
    rejected = httpx.post(
        f"{server}/api/contributions/{opened['id']}/reject",
        json={"reason": "not needed"},
        headers=maintainer,
    )
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"


def test_bad_input_is_refused_with_the_reason(server: str, tiny_hub: Hub) -> None:
    headers = {"X-Upstream-User": "bo"}
    url = f"{server}/api/contributions"
    bad_line = httpx.post(
        url, json={"model": "tiny", "title": "t", "dataset": DATASET + "\n[1, 2]"}, headers=headers
    )
    assert bad_line.status_code == 422 and "line 3" in bad_line.json()["error"]
    both = httpx.post(
        url,
        json={
            "model": "tiny",
            "title": "t",
            "dataset": DATASET,
            "adapter": {"config": {}, "safetensors_base64": ""},
        },
        headers=headers,
    )
    assert both.status_code == 422 and "exactly one" in both.json()["error"]
    not_b64 = httpx.post(
        url,
        json={
            "model": "tiny",
            "title": "t",
            "adapter": {"config": {}, "safetensors_base64": "***"},
        },
        headers=headers,
    )
    assert not_b64.status_code == 422 and "base64" in not_b64.json()["error"]
    nobody = httpx.post(url, json={"model": "tiny", "title": "t", "dataset": DATASET})
    assert nobody.status_code == 422 and "X-Upstream-User" in nobody.json()["error"]
    assert httpx.get(url).json() == {"contributions": []}
    assert httpx.get(f"{url}/7").status_code == 404
