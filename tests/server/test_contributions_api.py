"""/api/contributions over real HTTP: open, checks by the worker, review, bad input."""

import base64
import json
from pathlib import Path

import httpx

from tests.people import bearer
from tests.server.conftest import wait_job
from tests.test_contributions import make_adapter
from upstream.hub import Hub
from upstream.registry import materialize, resolve

DATASET = "\n".join(
    json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    for q, a in [("hi", "hello"), ("sky?", "blue")]
)


def test_open_check_and_review(server: str, tiny_hub: Hub, tmp_path: Path) -> None:
    bo = bearer(tiny_hub, "bo")
    cy = bearer(tiny_hub, "cy")
    maintainer = bearer(tiny_hub, "mia", "maintainer")
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

    assert shown["events"][0]["actor"] == "bo"  # the token's user is the author
    url = f"{server}/api/contributions/{opened['id']}"
    own = httpx.post(f"{url}/approve", json={}, headers=bo)
    assert own.status_code == 403 and own.json()["error"]["code"] == "forbidden"
    assert "bo may not approve their own work" in own.json()["error"]["message"]
    other = httpx.post(f"{url}/approve", json={"override": "x"}, headers=cy)
    assert other.status_code == 403 and "only a maintainer" in other.json()["error"]["message"]
    other = httpx.post(f"{url}/reject", json={"reason": "no"}, headers=cy)
    assert other.status_code == 403 and "only a maintainer" in other.json()["error"]["message"]
    anonymous = httpx.post(f"{url}/reject", json={"reason": "no"})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    rejected = httpx.post(f"{url}/reject", json={"reason": "not needed"}, headers=maintainer)
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"


def test_bad_input_is_refused_with_the_reason(server: str, tiny_hub: Hub) -> None:
    headers = bearer(tiny_hub, "bo")
    url = f"{server}/api/contributions"
    bad_line = httpx.post(
        url, json={"model": "tiny", "title": "t", "dataset": DATASET + "\n[1, 2]"}, headers=headers
    )
    assert bad_line.status_code == 422 and "line 3" in bad_line.json()["error"]["message"]
    assert bad_line.json()["error"]["code"] == "invalid_input"
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
    assert both.status_code == 422 and "exactly one" in both.json()["error"]["message"]
    not_b64 = httpx.post(
        url,
        json={
            "model": "tiny",
            "title": "t",
            "adapter": {"config": {}, "safetensors_base64": "***"},
        },
        headers=headers,
    )
    assert not_b64.status_code == 422 and "base64" in not_b64.json()["error"]["message"]
    good = {"model": "tiny", "title": "t", "dataset": DATASET}
    nobody = httpx.post(url, json=good)  # anonymous: may read, not write
    assert nobody.status_code == 401 and nobody.json()["error"]["code"] == "unauthorized"
    assert "Authorization: Bearer" in nobody.json()["error"]["message"]
    named = httpx.post(url, json=good, headers={"X-Upstream-User": "bo"})  # ignored now
    assert named.status_code == 401 and named.json()["error"]["code"] == "unauthorized"
    reporter = httpx.post(url, json=good, headers=bearer(tiny_hub, "ana", "reporter"))
    assert (
        reporter.status_code == 403 and "only a contributor" in reporter.json()["error"]["message"]
    )
    assert httpx.get(url).json() == {"contributions": []}
    assert httpx.get(f"{url}/7").status_code == 404


def test_a_big_adapter_is_uploaded_streamed_then_named(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from tests.server.conftest import serve
    from upstream.registry import import_model

    hub = Hub.open(tmp_path / "home", write_rate_per_minute=0, adapter_max_mb=1)
    try:
        import_model(hub, str(tiny_model_dir), "tiny")
        with hub.session() as s:
            adapter = make_adapter(materialize(hub, resolve(s, "tiny")), tmp_path / "a")
        weights = (adapter / "adapter_model.safetensors").read_bytes()
        config = json.loads((adapter / "adapter_config.json").read_text())
        bo, cy = bearer(hub, "bo", "contributor"), bearer(hub, "cy", "contributor")
        with serve(hub) as url:

            def chunks(data: bytes):  # no Content-Length: counted as it streams
                for i in range(0, len(data), 4096):
                    yield data[i : i + 4096]

            up = httpx.post(f"{url}/api/uploads", content=chunks(weights), headers=bo)
            assert up.status_code == 201, up.text
            sha = up.json()["upload"]
            assert up.json()["size"] == len(weights)
            body = {
                "model": "tiny",
                "title": "a fix",
                "adapter": {"config": config, "safetensors_upload": sha},
            }
            theirs = httpx.post(f"{url}/api/contributions", json=body, headers=cy)
            assert theirs.status_code == 404, theirs.text  # an upload is its uploader's
            mine = httpx.post(f"{url}/api/contributions", json=body, headers=bo)
            assert mine.status_code == 201, mine.text
            again = httpx.post(f"{url}/api/contributions", json=body, headers=bo)
            assert again.status_code == 404  # used once
            big = b"x" * (2**20 + 1)
            r = httpx.post(f"{url}/api/uploads", content=chunks(big), headers=bo)
            assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
            r = httpx.post(f"{url}/api/uploads", content=big, headers=bo)  # declared length
            assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
            anon = httpx.post(f"{url}/api/uploads", content=b"x")
            assert anon.status_code == 401
            both = {**body, "adapter": {**body["adapter"], "safetensors_base64": "eA=="}}
            r = httpx.post(f"{url}/api/contributions", json=both, headers=bo)
            assert r.status_code == 422 and "exactly one" in r.json()["error"]["message"]
        left = list((hub.settings.work_dir / "uploads").rglob("*"))
        assert not [p for p in left if p.is_file()], left  # nothing half written remains
    finally:
        hub.close()
